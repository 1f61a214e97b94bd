//! `colony agents --db PATH`: the recorded hierarchy and its chain of command;
//! `colony agents --server URL`: the live one, with each agent's state and health.

use crate::{
    Failure,
    output::{Table, thousands},
};
use colony_journal::{AgentQuery, SqliteReader};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("query").multiple(false).args(["children", "ancestors", "tier", "agent"])))]
pub(crate) struct Args {
    #[command(flatten)]
    source: crate::commands::client::Source,
    /// The agents that report to agent ID.
    #[arg(long, value_name = "ID")]
    children: Option<u32>,
    /// The chain of command above agent ID, nearest first.
    #[arg(long, value_name = "ID")]
    ancestors: Option<u32>,
    /// The agents of one tier, by name.
    #[arg(long, value_name = "NAME")]
    tier: Option<String>,
    /// One agent.
    #[arg(long, value_name = "ID")]
    agent: Option<u32>,
    /// Most agents to list.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    use crate::commands::client::{self, AgentsQuery, Origin};
    let db = match args.source.origin()? {
        Origin::Journal(db) => db,
        Origin::Server(server) => {
            let query = match (&args.children, &args.ancestors, &args.agent, &args.tier) {
                (Some(a), ..) => AgentsQuery::Children(*a),
                (_, Some(a), ..) => AgentsQuery::Ancestors(*a),
                (_, _, Some(a), _) => AgentsQuery::One(*a),
                (.., Some(name)) => AgentsQuery::Tier(name),
                _ => AgentsQuery::Tiers,
            };
            return client::agents(&server, query, args.limit, args.json);
        }
    };
    super::sqlite_only(
        db,
        "read its agents through the `colony serve` that keeps it (--server URL)",
    )?;
    let reader = SqliteReader::open(db).map_err(Failure::input)?;
    let tiers = reader.tiers().map_err(Failure::work)?;
    let id = colony_core::AgentId;
    let query = if let Some(a) = args.children {
        Some(AgentQuery::Children(id(a)))
    } else if let Some(a) = args.ancestors {
        Some(AgentQuery::Ancestors(id(a)))
    } else if let Some(a) = args.agent {
        Some(AgentQuery::One(id(a)))
    } else if let Some(name) = &args.tier {
        let Some(index) = tiers.iter().position(|(n, _)| n == name) else {
            let known: Vec<&str> = tiers.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Failure::input(anyhow::anyhow!(
                "tier `{name}` is not in this journal's hierarchy: it has {}",
                if known.is_empty() {
                    "no tiers recorded".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        Some(AgentQuery::Tier(index as u8))
    } else {
        None
    };
    let Some(query) = query else {
        if args.json {
            let tiers: Vec<_> = tiers
                .iter()
                .map(|(name, n)| serde_json::json!({ "name": name, "agents": n }))
                .collect();
            println!("{}", serde_json::json!({ "tiers": tiers }));
            return Ok(());
        }
        let mut t = Table::new(&["tier", "agents"]);
        for (name, n) in &tiers {
            t.row(vec![name.clone(), thousands(*n)]);
        }
        t.row(vec![
            "total".into(),
            thousands(tiers.iter().map(|(_, n)| n).sum()),
        ]);
        print!("{}", t.render());
        return Ok(());
    };
    let agents = reader.agents(query, args.limit).map_err(Failure::work)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&agents).map_err(Failure::work)?
        );
        return Ok(());
    }
    let name = |tier: u8| {
        tiers
            .get(tier as usize)
            .map_or("?".to_owned(), |(n, _)| n.clone())
    };
    let mut t = Table::new(&["agent", "tier", "parent", "pool"]);
    for a in &agents {
        t.row(vec![
            a.id.0.to_string(),
            name(a.tier),
            a.parent.map_or("-".into(), |p| p.0.to_string()),
            a.pool.map_or("-".into(), |p| p.to_string()),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
