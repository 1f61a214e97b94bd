//! Tokens, scopes, TLS, rate limits and bad requests, over real HTTP(S) on loopback.

use colony_agents::sim::SimOptions;
use colony_runtime::{Runtime, RuntimeOptions};
use colony_server::{Config, Scope, Tls, Tokens, testing::serve};
use serde_json::{Value, json};
use std::path::Path;

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

/// A client whose connections come from `ip`, one of the loopback addresses (127.0.0.0/8).
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn runtime() -> Runtime {
    colony_server::testing::sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await
}

/// A tokens file with one token per scope: read, submit, admin.
fn tokens(dir: &Path) -> (Tokens, [String; 3]) {
    let path = dir.join("tokens");
    let read = Tokens::create(&path, "dash", Scope::Read).unwrap();
    let submit = Tokens::create(&path, "ci", Scope::Submit).unwrap();
    let admin = Tokens::create(&path, "ops", Scope::Admin).unwrap();
    (Tokens::load(&path).unwrap(), [read, submit, admin])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_asks_for_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, submit, admin]) = tokens(dir.path());
    let runtime = runtime().await;
    // With tokens, any address may be listened on.
    let config = Config {
        tokens: Some(tokens),
        ..Config::local("0.0.0.0:0".parse().unwrap())
    };
    let server = colony_server::serve(runtime.handle().clone(), config)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", server.addr.port());
    let client = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>| {
        let r = client
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body("{}");
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    let r = post("/v1/tasks", None).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(json(r).await["error"]["code"], "unauthorized");
    let r = post("/v1/tasks", Some("colony_nope")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post("/v1/tasks", Some(&read)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = json(r).await;
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs submit")
    );
    let r = post("/v1/tasks", Some(&submit)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_u64().unwrap();
    let r = post("/v1/agents/3/kill", Some(&submit))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post("/v1/agents/3/kill", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Reading needs a token too, any scope; health and the API document do not.
    let get = |path: &str| client.get(format!("{url}{path}"));
    assert_eq!(get("/v1/stats").send().await.unwrap().status(), 401);
    assert_eq!(get("/metrics").send().await.unwrap().status(), 401);
    for token in [&read, &submit, &admin] {
        let r = get(&format!("/v1/tasks/{id}")).bearer_auth(token);
        assert_eq!(r.send().await.unwrap().status(), 200);
    }
    assert_eq!(get("/healthz").send().await.unwrap().status(), 200);
    assert_eq!(get("/openapi.json").send().await.unwrap().status(), 200);
    // A cookie, as the dashboard's login sets it, is worth `read` whatever its token.
    let cookie = format!("colony_token={admin}");
    let r = get("/v1/stats")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post("/v1/agents/3/kill", None).header("cookie", &cookie);
    assert_eq!(r.send().await.unwrap().status(), 403);
    let login = |token: &str| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{url}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    let r = login(&read).await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.starts_with(&format!("colony_token={read}")), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    // A cookie holds its token: only a token worth no more than a cookie may go in one.
    let r = login(&admin).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["error"]["code"], "not-a-read-token");
    assert_eq!(login("colony_wrong").await.unwrap().status(), 401);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bad_requests_get_4xx_and_good_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, submit, _]) = tokens(dir.path());
    let runtime = runtime().await;
    let config = Config {
        tokens: Some(tokens),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, url) = serve(&runtime, config).await;
    let client = reqwest::Client::new();
    // Unknown tokens lock their address out for a while: they come from an address of their
    // own, so that the other requests are judged on what they are.
    let guesser = from("127.0.0.2");
    let huge = "x".repeat(colony_server::MAX_BODY + 1);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1_000 {
        let request = match i % 10 {
            0 => client.post(format!("{url}/v1/tasks")).body("{}"),
            1 => guesser
                .post(format!("{url}/v1/tasks"))
                .bearer_auth("colony_0"),
            2 => client.post(format!("{url}/v1/tasks")).bearer_auth(&read),
            3 => client
                .post(format!("{url}/v1/tasks"))
                .bearer_auth(&submit)
                .header("content-type", "application/json")
                .body("{\"payload\": [1, 2"),
            4 => client
                .post(format!("{url}/v1/tasks"))
                .bearer_auth(&submit)
                .header("content-type", "application/json")
                .body(huge.clone()),
            5 => client
                .post(format!("{url}/v1/tasks/batch"))
                .bearer_auth(&submit)
                .header("content-type", "application/json")
                .body(json!({"tasks": [{"priority": "high"}]}).to_string()),
            6 => client
                .get(format!("{url}/v1/agents?limit=0"))
                .bearer_auth(&read),
            7 => client
                .get(format!("{url}/v1/tasks?state=lost"))
                .bearer_auth(&read),
            8 => client
                .put(format!("{url}/v1/pools/0"))
                .bearer_auth(&submit)
                .header("content-type", "application/json")
                .body("{\"agents\": 1}"),
            _ => client
                .get(format!("{url}/v1/tasks/{}", "9".repeat(30)))
                .header("authorization", "Basic Zm9vOmJhcg=="),
        };
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let body = json(r).await;
        assert!(
            (400..500).contains(&status) && body["error"]["code"].is_string(),
            "request {i}: {status} {body}"
        );
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses.values().sum::<u32>(), 1_000, "{statuses:?}");
    // The server is unharmed: a good request goes through.
    let r = client
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(&submit)
        .header("content-type", "application/json")
        .body("{\"payload\": 7}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_a_client_waits_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, submit, _]) = tokens(dir.path());
    let runtime = runtime().await;
    let config = Config {
        tokens: Some(tokens),
        rate_limit: Some(5.try_into().unwrap()),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, url) = serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..20 {
        let r = client
            .get(format!("{url}/v1/stats"))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("20 requests at once exceed 5 per second");
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(json(r).await["error"]["code"], "rate-limited");
    // Another token has its own budget.
    let r = client
        .get(format!("{url}/v1/stats"))
        .bearer_auth(&submit)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let runtime = runtime().await;
    let config = Config {
        tls: Some(Tls {
            cert: cert_path.clone(),
            key: key_path.clone(),
        }),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, _) = serve(&runtime, config).await;
    assert_eq!(server.scheme, "https");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{}", server.addr.port());
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    // Plain HTTP to the TLS port gets no answer a client could take for one.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/healthz", server.addr.port())).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    server.stop();
    // Files that are not a certificate and key are refused, naming the file.
    std::fs::write(&key_path, "not a key").unwrap();
    let config = Config {
        tls: Some(Tls {
            cert: cert_path,
            key: key_path,
        }),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let error = colony_server::serve(runtime.handle().clone(), config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("key.pem") && error.contains("no private key"),
        "{error}"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_cannot_act_through_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, submit, admin]) = tokens(dir.path());
    let runtime = runtime().await;
    // Runs start programs: without tokens the server refuses to take them.
    let config = Config {
        runs: Some(dir.path().join("runs")),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let error = colony_server::serve(runtime.handle().clone(), config)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("need tokens"), "{error}");
    let config = Config {
        tokens: Some(tokens),
        runs: Some(dir.path().join("runs")),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, url) = serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let workflow = "name: w\nagents: [{ name: a, kind: sim }]\ntasks: [{ id: t, agent: a }]\n";
    let run = |token: &str, kind: &str| {
        client
            .post(format!("{url}/v1/runs"))
            .bearer_auth(token)
            .header("content-type", kind)
            .body(workflow)
            .send()
    };
    // Only an admin token runs a workflow, and only sent as YAML or TOML, which a page
    // cannot send to another site unasked.
    assert_eq!(
        run(&submit, "application/yaml").await.unwrap().status(),
        403
    );
    assert_eq!(run(&read, "application/yaml").await.unwrap().status(), 403);
    let r = run(&admin, "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(json(r).await["error"]["code"], "bad-content-type");
    assert_eq!(run(&admin, "application/yaml").await.unwrap().status(), 202);
    let r = client
        .post(format!("{url}/v1/runs"))
        .header("cookie", format!("colony_token={read}"))
        .header("content-type", "application/yaml")
        .body(workflow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a cookie is worth read only");
    // A request that changes state, from another site's page, is refused whatever it holds.
    let task = || {
        client
            .post(format!("{url}/v1/tasks"))
            .bearer_auth(&submit)
            .header("content-type", "application/json")
            .body("{}")
    };
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
    ] {
        let r = task().header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
        assert_eq!(json(r).await["error"]["code"], "cross-site");
    }
    let own = format!("http://{}", server.addr);
    let r = task()
        .header("origin", own)
        .header("sec-fetch-site", "same-origin");
    assert_eq!(r.send().await.unwrap().status(), 202);
    server.stop();
    // Without tokens, only requests addressed to loopback are answered: a page whose name
    // was rebound to 127.0.0.1 sends its own name.
    let (server, url) = serve(&runtime, colony_server::testing::local()).await;
    let stats = format!("{url}/v1/stats");
    let r = client
        .get(&stats)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(json(r).await["error"]["code"], "not-loopback-host");
    for host in ["localhost:7070", "127.0.0.1", "[::1]:80", "LOCALHOST"] {
        let r = client
            .get(&stats)
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_tokens_is_rate_limited_too() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, ..]) = tokens(dir.path());
    let runtime = runtime().await;
    let config = Config {
        tokens: Some(tokens),
        rate_limit: Some(5.try_into().unwrap()),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, url) = serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = client
            .get(format!("{url}/v1/stats"))
            .bearer_auth(format!("colony_guess{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.contains(&401) && statuses.contains(&429),
        "{statuses:?}"
    );
    // A good token from another address has a budget of its own.
    let r = from("127.0.0.3")
        .get(format!("{url}/v1/stats"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    runtime.shutdown().await;
}

/// Guesses from one address: how many were answered 401 (looked at) before the first 429,
/// and that 429's `Retry-After`.
async fn guess_until_refused(
    send: impl AsyncFn(String) -> reqwest::Response,
) -> (usize, u64, Value) {
    for i in 0..100 {
        let r = send(format!("colony_{i:064x}")).await;
        match r.status().as_u16() {
            401 => continue,
            429 => {
                let wait = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                return (i, wait, json(r).await);
            }
            other => panic!("guess {i}: {other} {}", json(r).await),
        }
    }
    panic!("100 wrong tokens were all looked at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_address_without_a_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, ..]) = tokens(dir.path());
    let runtime = runtime().await;
    // No --rate-limit: the budget of failures holds by default.
    let config = Config {
        tokens: Some(tokens),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, url) = serve(&runtime, config).await;
    let burst = colony_server::auth::FAILED_AUTH_BURST;
    // Bearer tokens on the API.
    let api = from("127.0.0.4");
    let (looked_at, wait, body) = guess_until_refused(async |token| {
        api.get(format!("{url}/v1/stats"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(looked_at, burst, "{body}");
    assert_eq!(body["error"]["code"], "too-many-failures");
    assert!(wait >= 1, "{wait}");
    // Over its budget, the address still gets through with a good token (another client
    // behind the same proxy or NAT), while its unknown tokens stay refused.
    let r = api
        .get(format!("{url}/v1/stats"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api
        .get(format!("{url}/v1/stats"))
        .bearer_auth("colony_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // The dashboard's login form is limited alike, per address.
    let browser = from("127.0.0.5");
    let (looked_at, _, body) = guess_until_refused(async |token| {
        browser
            .post(format!("{url}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(looked_at, burst, "{body}");
    // Other addresses are untouched.
    let r = from("127.0.0.6")
        .get(format!("{url}/v1/stats"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Once its failures have drained, the address is heard again.
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let r = api
        .get(format!("{url}/v1/stats"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_counts_against_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, [read, ..]) = tokens(dir.path());
    let runtime = runtime().await;
    let config = Config {
        tokens: Some(tokens),
        rate_limit: Some(3.try_into().unwrap()),
        ..Config::local("127.0.0.1:0".parse().unwrap())
    };
    let (server, url) = serve(&runtime, config).await;
    let browser = from("127.0.0.7");
    let mut statuses = Vec::new();
    // Good tokens, not guesses: only the rate stops them.
    for _ in 0..10 {
        let r = browser
            .post(format!("{url}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={read}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&303), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    server.stop();
    runtime.shutdown().await;
}
