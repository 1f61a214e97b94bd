//! The `sim` backend: simulated agents with seeded latency and faults.
//!
//! Every attempt draws its fate from a random generator seeded by the backend's seed, the task
//! id and the attempt number, so a run is reproducible whatever order the runtime schedules it
//! in. The draws: a latency (fixed, uniform or lognormal), then at most one fault: a retryable
//! error, a crash (the agent panics) or a hang (the attempt never finishes; only the task's
//! timeout ends it). A clean attempt echoes the payload as its output.

use crate::{Agent, Error, Execution, Outcome, Task};
use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// z-score of the 99th percentile of a standard normal distribution.
const Z99: f64 = 2.326_347_874;

/// How long a simulated attempt takes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Latency {
    Fixed {
        #[serde(with = "micros")]
        value: Duration,
    },
    /// Uniform in `min..=max`.
    Uniform {
        #[serde(with = "micros")]
        min: Duration,
        #[serde(with = "micros")]
        max: Duration,
    },
    /// Lognormal with the given median and 99th percentile.
    LogNormal {
        #[serde(with = "micros")]
        p50: Duration,
        #[serde(with = "micros")]
        p99: Duration,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed {
            value: Duration::ZERO,
        }
    }
}

mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}

/// Settings of a simulated agent kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SimOptions {
    /// Seed of every draw; the same seed gives the same run.
    pub seed: u64,
    pub latency: Latency,
    /// Probability that an attempt fails with a retryable error.
    pub error_rate: f64,
    /// Probability that an attempt crashes its agent (a panic).
    pub crash_rate: f64,
    /// Probability that an attempt never finishes.
    pub hang_rate: f64,
    /// In a dry run, what the pool it stands in for answers like: a clean attempt then
    /// answers in that shape, its `content` the task's prompt, so that later tasks reading
    /// `{{outputs.ID.content}}` rehearse too.
    #[serde(skip)]
    pub stands_in_for: Option<StandIn>,
}

/// The shape of the answers a stand-in gives.
#[derive(Clone, Debug, PartialEq)]
pub enum StandIn {
    /// A coding-agent CLI's output (`content`, `preset`, `workdir` `.`, usage, cost).
    Cli(crate::presets::Preset),
    /// An `http` agent's (`content`, `model`, usage, cost).
    Http { model: String },
}

/// Settings outside their allowed range, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    #[error("sim {field} {got} is out of range: allowed 0.0..=1.0")]
    Rate { field: &'static str, got: f64 },
    #[error("sim fault rates add up to {got}: allowed at most 1.0")]
    RateSum { got: f64 },
    #[error("sim latency range {min:?}..={max:?} is empty: min must not exceed max")]
    Range { min: Duration, max: Duration },
    #[error("sim lognormal latency needs 0 < p50 <= p99, got p50 {p50:?} and p99 {p99:?}")]
    Percentiles { p50: Duration, p99: Duration },
}

impl SimOptions {
    pub fn validate(&self) -> Result<(), OptionsError> {
        let rates = [
            ("error-rate", self.error_rate),
            ("crash-rate", self.crash_rate),
            ("hang-rate", self.hang_rate),
        ];
        for (field, got) in rates {
            if !(0.0..=1.0).contains(&got) {
                return Err(OptionsError::Rate { field, got });
            }
        }
        let sum = self.error_rate + self.crash_rate + self.hang_rate;
        if sum > 1.0 + 1e-9 {
            return Err(OptionsError::RateSum { got: sum });
        }
        match self.latency {
            Latency::Uniform { min, max } if min > max => Err(OptionsError::Range { min, max }),
            Latency::LogNormal { p50, p99 } if p50.is_zero() || p50 > p99 => {
                Err(OptionsError::Percentiles { p50, p99 })
            }
            _ => Ok(()),
        }
    }
}

/// The payload a simulated crash unwinds with. It is raised with `resume_unwind`, which skips
/// the panic hook: a chaos run of a million crashes prints nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimCrash;

/// What a simulated attempt will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Succeed,
    Error,
    Crash,
    Hang,
}

/// How a simulated attempt with no latency delivers its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Answer {
    /// Inside `Agent::handle`, as `Execution::Done`: no wakeup, no second poll, no allocation.
    /// It measures the runtime's own path; no real agent answers like this.
    #[default]
    Inline,
    /// From another tokio task, through a channel: the attempt returns `Execution::Running`,
    /// the runtime parks it, and it is woken when the other task sends the answer, as any
    /// agent waiting on I/O (a process, an HTTP endpoint) is.
    Woken,
}

/// The simulated agent kind.
#[derive(Debug, Clone)]
pub struct Sim {
    options: SimOptions,
    lognormal: Option<LogNormal<f64>>,
    answer: Answer,
}

impl Sim {
    pub fn new(options: SimOptions) -> Result<Self, OptionsError> {
        options.validate()?;
        let lognormal = match options.latency {
            Latency::LogNormal { p50, p99 } => {
                let mu = (p50.as_secs_f64()).ln();
                let sigma = ((p99.as_secs_f64()).ln() - mu) / Z99;
                Some(LogNormal::new(mu, sigma).expect("validated: sigma is finite and >= 0"))
            }
            _ => None,
        };
        Ok(Self {
            options,
            lognormal,
            answer: Answer::Inline,
        })
    }

    /// The same agent, answering attempts without latency as `answer` says. Kept out of
    /// [`SimOptions`], which is also the `sim` settings of workflow files: this is a benchmark
    /// setting.
    pub fn answering(self, answer: Answer) -> Self {
        Self { answer, ..self }
    }

    /// The latency and fate of attempt `attempt` of task `task`.
    pub fn draw(&self, task: u64, attempt: u32) -> (Duration, Fate) {
        let mut rng = SmallRng::seed_from_u64(mix(self.options.seed, task, attempt));
        let latency = match self.options.latency {
            Latency::Fixed { value } => value,
            Latency::Uniform { min, max } => Duration::from_nanos(
                rng.random_range(min.as_nanos() as u64..=max.as_nanos() as u64),
            ),
            Latency::LogNormal { .. } => {
                let secs = self
                    .lognormal
                    .expect("built with the options")
                    .sample(&mut rng);
                Duration::from_secs_f64(secs.min(86_400.0))
            }
        };
        let o = &self.options;
        let fate = if o.error_rate + o.crash_rate + o.hang_rate == 0.0 {
            Fate::Succeed
        } else {
            let x: f64 = rng.random();
            if x < o.error_rate {
                Fate::Error
            } else if x < o.error_rate + o.crash_rate {
                Fate::Crash
            } else if x < o.error_rate + o.crash_rate + o.hang_rate {
                Fate::Hang
            } else {
                Fate::Succeed
            }
        };
        (latency, fate)
    }
}

/// How often a simulated agent working a long attempt says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// SplitMix64-style mixing of the seed, task and attempt into one seed.
fn mix(seed: u64, task: u64, attempt: u32) -> u64 {
    let mut z =
        seed ^ task.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn finish(fate: Fate, task: Task, shape: Option<StandIn>) -> Outcome {
    match fate {
        Fate::Succeed => Ok(match shape {
            None => task.payload,
            Some(shape) => shaped(&shape, &task),
        }),
        Fate::Error => Err(Error::retryable(format!(
            "simulated error on attempt {}",
            task.attempt
        ))),
        Fate::Crash => std::panic::resume_unwind(Box::new(SimCrash)),
        Fate::Hang => unreachable!("a hang never finishes"),
    }
}

/// A stand-in's answer in `shape`: its content is the task's prompt.
fn shaped(shape: &StandIn, task: &Task) -> Bytes {
    let prompt = crate::command::Placeholders::new(task, true)
        .ok()
        .and_then(|p| p.prompt())
        .unwrap_or_default();
    let mut out = serde_json::json!({
        "content": prompt,
        "stand-in": true,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "cost_usd": 0.0,
    });
    match shape {
        StandIn::Cli(preset) => {
            out["preset"] = preset.name().into();
            out["workdir"] = ".".into();
        }
        StandIn::Http { model } => out["model"] = model.as_str().into(),
    }
    Bytes::from(out.to_string())
}

impl Agent for Sim {
    fn handle(&self, task: Task) -> Execution {
        let (latency, fate) = self.draw(task.id.0, task.attempt);
        let shape = self.options.stands_in_for.clone();
        match (fate, latency.is_zero()) {
            (Fate::Hang, _) => Execution::Running(Box::pin(std::future::pending())),
            (_, true) if self.answer == Answer::Woken => Execution::Running(Box::pin(async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // Spawned when first polled, so that it runs on the runtime polling the
                // attempt; the attempt then waits for a wakeup from that other task.
                crate::spawner::Spawner::spawn("sim-answer", async move {
                    let _ = tx.send(());
                });
                // A runtime shutting down may drop the answering task: the attempt still ends.
                let _ = rx.await;
                finish(fate, task, shape)
            })),
            (_, true) => Execution::Done(finish(fate, task, shape)),
            (_, false) => Execution::Running(Box::pin(async move {
                // A live agent working a long task beats its heart; a hung one (above) never does.
                let mut left = latency;
                while left > HEARTBEAT {
                    tokio::time::sleep(HEARTBEAT).await;
                    task.heartbeat.beat();
                    left -= HEARTBEAT;
                }
                tokio::time::sleep(left).await;
                finish(fate, task, shape)
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::{AgentId, TaskId};
    use std::panic::{AssertUnwindSafe, catch_unwind};

    fn task(id: u64) -> Task {
        Task::new(TaskId(id), 1, AgentId(0), "{}".into())
    }

    #[test]
    fn same_seed_same_fates_and_rates_hold() {
        let options = SimOptions {
            seed: 42,
            error_rate: 0.1,
            crash_rate: 0.05,
            hang_rate: 0.02,
            ..Default::default()
        };
        let a = Sim::new(options.clone()).unwrap();
        let b = Sim::new(options).unwrap();
        let mut counts = [0u32; 4];
        for id in 0..20_000 {
            let fate = a.draw(id, 1).1;
            assert_eq!(fate, b.draw(id, 1).1);
            counts[fate as usize] += 1;
        }
        let share = |i: usize| f64::from(counts[i]) / 20_000.0;
        assert!((share(1) - 0.10).abs() < 0.01, "errors {}", share(1));
        assert!((share(2) - 0.05).abs() < 0.01, "crashes {}", share(2));
        assert!((share(3) - 0.02).abs() < 0.01, "hangs {}", share(3));
    }

    #[test]
    fn lognormal_percentiles() {
        let latency = Latency::LogNormal {
            p50: Duration::from_millis(10),
            p99: Duration::from_millis(100),
        };
        let sim = Sim::new(SimOptions {
            latency,
            ..Default::default()
        })
        .unwrap();
        let mut samples: Vec<Duration> = (0..20_000).map(|id| sim.draw(id, 1).0).collect();
        samples.sort();
        let p50 = samples[10_000].as_secs_f64();
        let p99 = samples[19_800].as_secs_f64();
        assert!((p50 - 0.010).abs() < 0.001, "p50 {p50}");
        assert!((p99 - 0.100).abs() < 0.015, "p99 {p99}");
    }

    #[test]
    fn outcomes() {
        let ok = Sim::new(SimOptions::default()).unwrap();
        assert!(matches!(ok.handle(task(1)), Execution::Done(Ok(out)) if &out[..] == b"{}"));
        let err = Sim::new(SimOptions {
            error_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            err.handle(task(1)),
            Execution::Done(Err(Error::Retryable(_)))
        ));
        let crash = Sim::new(SimOptions {
            crash_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
        let unwound = catch_unwind(AssertUnwindSafe(|| crash.handle(task(1)))).unwrap_err();
        assert!(unwound.is::<SimCrash>());
    }

    #[tokio::test]
    async fn woken_answers_come_from_another_task() {
        let sim = Sim::new(SimOptions::default())
            .unwrap()
            .answering(Answer::Woken);
        let Execution::Running(mut fut) = sim.handle(task(1)) else {
            panic!("a woken answer returns a running attempt")
        };
        // The first poll finds no answer yet: it is sent by a task that has not run.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(matches!(fut.await, Ok(out) if &out[..] == b"{}"));
        let failing = Sim::new(SimOptions {
            error_rate: 1.0,
            ..Default::default()
        })
        .unwrap()
        .answering(Answer::Woken);
        let Execution::Running(fut) = failing.handle(task(2)) else {
            panic!("a woken answer returns a running attempt")
        };
        assert!(matches!(fut.await, Err(Error::Retryable(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_hang_run_in_virtual_time() {
        let slow = Sim::new(SimOptions {
            latency: Latency::Fixed {
                value: Duration::from_secs(5),
            },
            ..Default::default()
        })
        .unwrap();
        let Execution::Running(fut) = slow.handle(task(1)) else {
            panic!("expected a running attempt")
        };
        let start = tokio::time::Instant::now();
        assert!(fut.await.is_ok());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let hang = Sim::new(SimOptions {
            hang_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
        let Execution::Running(fut) = hang.handle(task(1)) else {
            panic!("expected a running attempt")
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), fut)
                .await
                .is_err()
        );
    }

    #[test]
    fn bad_options_are_named() {
        let bad = |o: SimOptions| Sim::new(o).unwrap_err().to_string();
        assert!(
            bad(SimOptions {
                crash_rate: 1.5,
                ..Default::default()
            })
            .contains("crash-rate 1.5")
        );
        assert!(
            bad(SimOptions {
                error_rate: 0.6,
                hang_rate: 0.6,
                ..Default::default()
            })
            .contains("add up to")
        );
        let latency = Latency::Uniform {
            min: Duration::from_secs(2),
            max: Duration::from_secs(1),
        };
        assert!(
            bad(SimOptions {
                latency,
                ..Default::default()
            })
            .contains("min must not exceed max")
        );
    }
}
