//! Supervision decisions with Erlang/OTP semantics, plus restart backoff.
//!
//! A [`Supervisor`] is told when one of its children exits and answers with the commands the
//! runtime carries out: restart these children after this delay, or give up and escalate to
//! the parent. Strategies, restart policies and restart intensity mean what they mean in OTP;
//! backoff with jitter between restarts is what OTP lacks. No clock: `now` is passed in, so
//! tests drive it with virtual time and a seeded generator.
//!
//! The first restart of a burst is immediate, as in OTP; each further restart within the
//! period waits longer. The runtime keeps one engine per managing agent, created when one of
//! its children first exits (see `colony-runtime`'s `dispatcher/supervise.rs`).

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::{collections::VecDeque, time::Duration};

/// Which children restart when one exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Only the child that exited.
    #[default]
    OneForOne,
    /// Every child.
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// Whether a child that exited is restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always.
    #[default]
    Permanent,
    /// Only after an abnormal exit (a crash or a hang).
    Transient,
    /// Never.
    Temporary,
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Normal,
    Crash,
    /// Stopped answering; the runtime gave up on it.
    Hang,
}

/// Settings of a supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SupervisorOptions {
    pub strategy: Strategy,
    pub restart: RestartPolicy,
    /// Most restarts within `period` before the supervisor gives up and escalates.
    pub max_restarts: u32,
    pub period: Duration,
    /// A child's first restart in a burst is immediate; its second within `period` waits
    /// this long, and each further one multiplies the wait by `multiplier`, up to
    /// `max_backoff`. Counted per child: a crash-looping child backs off, and its siblings'
    /// independent crashes do not slow its restarts.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Each delay is moved by up to this fraction of itself, either way, at random.
    pub jitter: f64,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            restart: RestartPolicy::Permanent,
            max_restarts: 3,
            period: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Settings that make no sense, with the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("supervision period {got:?} is out of range: allowed more than 0 s and up to 1 day")]
    Period { got: Duration },
    #[error("supervision max-restarts {got} is out of range: allowed 1..=1000000")]
    MaxRestarts { got: u32 },
    #[error("supervision multiplier {got} is out of range: allowed 1.0..=100.0")]
    Multiplier { got: f64 },
    #[error("supervision jitter {got} is out of range: allowed 0.0..=1.0")]
    Jitter { got: f64 },
    #[error("supervision initial-backoff {initial:?} exceeds max-backoff {max:?}")]
    Backoff { initial: Duration, max: Duration },
}

impl SupervisorOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.period.is_zero() || self.period > Duration::from_secs(86_400) {
            return Err(Error::Period { got: self.period });
        }
        if !(1..=1_000_000).contains(&self.max_restarts) {
            return Err(Error::MaxRestarts {
                got: self.max_restarts,
            });
        }
        if !(1.0..=100.0).contains(&self.multiplier) {
            return Err(Error::Multiplier {
                got: self.multiplier,
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Jitter { got: self.jitter });
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::Backoff {
                initial: self.initial_backoff,
                max: self.max_backoff,
            });
        }
        Ok(())
    }
}

/// Settings of one tier's supervisors that differ from everyone's: each field given replaces
/// the one of the [`SupervisorOptions`] it is laid [`over`](SupervisorOverrides::over). A
/// coordinator may restart its supervisors more patiently than a supervisor its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct SupervisorOverrides {
    pub strategy: Option<Strategy>,
    pub restart: Option<RestartPolicy>,
    pub max_restarts: Option<u32>,
    pub period: Option<Duration>,
    pub initial_backoff: Option<Duration>,
    pub max_backoff: Option<Duration>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
}

impl SupervisorOverrides {
    /// `base` with the fields given here in place of its own.
    pub fn over(&self, base: SupervisorOptions) -> SupervisorOptions {
        SupervisorOptions {
            strategy: self.strategy.unwrap_or(base.strategy),
            restart: self.restart.unwrap_or(base.restart),
            max_restarts: self.max_restarts.unwrap_or(base.max_restarts),
            period: self.period.unwrap_or(base.period),
            initial_backoff: self.initial_backoff.unwrap_or(base.initial_backoff),
            max_backoff: self.max_backoff.unwrap_or(base.max_backoff),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }

    /// These overrides with `later`'s fields laid on top: a later layer of configuration
    /// wins field by field.
    pub fn then(&self, later: &SupervisorOverrides) -> SupervisorOverrides {
        SupervisorOverrides {
            strategy: later.strategy.or(self.strategy),
            restart: later.restart.or(self.restart),
            max_restarts: later.max_restarts.or(self.max_restarts),
            period: later.period.or(self.period),
            initial_backoff: later.initial_backoff.or(self.initial_backoff),
            max_backoff: later.max_backoff.or(self.max_backoff),
            multiplier: later.multiplier.or(self.multiplier),
            jitter: later.jitter.or(self.jitter),
        }
    }
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Start new incarnations of these children (indices, in start order) after `after`.
    Restart {
        children: Vec<usize>,
        after: Duration,
    },
    /// Restart intensity was exceeded: stop every child and hand the failure to the parent.
    Escalate,
}

/// The decision engine of one supervisor over `children` children, indexed in start order.
#[derive(Clone, Debug)]
pub struct Supervisor {
    options: SupervisorOptions,
    children: usize,
    /// Times of the restarts within the last period.
    restarts: VecDeque<Duration>,
    /// Per child: restarts in its current burst, and when the last one was.
    bursts: Vec<(u32, Duration)>,
    escalated: bool,
}

impl Supervisor {
    pub fn new(options: SupervisorOptions, children: usize) -> Result<Self, Error> {
        options.validate()?;
        Ok(Self {
            options,
            children,
            restarts: VecDeque::new(),
            bursts: Vec::new(),
            escalated: false,
        })
    }

    /// The supervisor has `children` children now (workers were added).
    pub fn set_children(&mut self, children: usize) {
        self.children = children;
    }

    /// Whether this supervisor has given up. It decides nothing more until the parent
    /// restarts it (see [`Supervisor::reset`]).
    pub fn escalated(&self) -> bool {
        self.escalated
    }

    /// The parent restarted this supervisor: a fresh start.
    pub fn reset(&mut self) {
        self.restarts.clear();
        self.bursts.clear();
        self.escalated = false;
    }

    /// Child `child` exited at `now`.
    pub fn on_exit(
        &mut self,
        child: usize,
        exit: Exit,
        now: Duration,
        rng: &mut impl Rng,
    ) -> Vec<Command> {
        if self.escalated || child >= self.children {
            return Vec::new();
        }
        let restart = match self.options.restart {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => exit != Exit::Normal,
            RestartPolicy::Temporary => false,
        };
        if !restart {
            return Vec::new();
        }
        while self
            .restarts
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= self.options.period)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u32 >= self.options.max_restarts {
            self.escalated = true;
            return vec![Command::Escalate];
        }
        self.restarts.push_back(now);
        if self.bursts.len() < self.children {
            self.bursts.resize(self.children, (0, Duration::ZERO));
        }
        let (count, last) = &mut self.bursts[child];
        if *count > 0 && now.saturating_sub(*last) >= self.options.period {
            *count = 0;
        }
        *count += 1;
        *last = now;
        let n = *count;
        let children = match self.options.strategy {
            Strategy::OneForOne => vec![child],
            Strategy::OneForAll => (0..self.children).collect(),
            Strategy::RestForOne => (child..self.children).collect(),
        };
        let after = self.backoff(n, rng);
        vec![Command::Restart { children, after }]
    }

    /// Delay before a child's `n`th restart of a burst (1-based): none before the first.
    fn backoff(&self, n: u32, rng: &mut impl Rng) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let o = &self.options;
        let base = o.initial_backoff.as_secs_f64() * o.multiplier.powi(n.saturating_sub(2) as i32);
        let base = base.min(o.max_backoff.as_secs_f64());
        let jitter = if o.jitter > 0.0 {
            rng.random_range(-o.jitter..=o.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((base * (1.0 + jitter)).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn overrides_replace_only_the_fields_they_give_and_later_layers_win() {
        let base = SupervisorOptions::default();
        let coordinator = SupervisorOverrides {
            max_restarts: Some(10),
            period: Some(Duration::from_secs(60)),
            ..SupervisorOverrides::default()
        };
        let o = coordinator.over(base);
        assert_eq!((o.max_restarts, o.period), (10, Duration::from_secs(60)));
        assert_eq!(
            SupervisorOptions {
                max_restarts: base.max_restarts,
                period: base.period,
                ..o
            },
            base,
            "nothing else changed"
        );
        let later = SupervisorOverrides {
            max_restarts: Some(20),
            strategy: Some(Strategy::OneForAll),
            ..SupervisorOverrides::default()
        };
        let both = coordinator.then(&later).over(base);
        assert_eq!(both.max_restarts, 20, "the later layer wins");
        assert_eq!(
            both.period,
            Duration::from_secs(60),
            "the earlier one stays"
        );
        assert_eq!(both.strategy, Strategy::OneForAll);
        assert_eq!(SupervisorOverrides::default().over(base), base);
    }

    fn sup(strategy: Strategy, restart: RestartPolicy) -> Supervisor {
        let options = SupervisorOptions {
            strategy,
            restart,
            jitter: 0.0,
            ..SupervisorOptions::default()
        };
        Supervisor::new(options, 4).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn restarted(commands: &[Command]) -> Vec<usize> {
        match commands {
            [Command::Restart { children, .. }] => children.clone(),
            other => panic!("expected one restart, got {other:?}"),
        }
    }

    #[test]
    fn strategies_choose_who_restarts() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut s = sup(Strategy::OneForOne, RestartPolicy::Permanent);
        assert_eq!(restarted(&s.on_exit(2, Exit::Crash, ms(0), &mut rng)), [2]);
        let mut s = sup(Strategy::OneForAll, RestartPolicy::Permanent);
        assert_eq!(
            restarted(&s.on_exit(2, Exit::Crash, ms(0), &mut rng)),
            [0, 1, 2, 3]
        );
        let mut s = sup(Strategy::RestForOne, RestartPolicy::Permanent);
        assert_eq!(
            restarted(&s.on_exit(1, Exit::Hang, ms(0), &mut rng)),
            [1, 2, 3]
        );
    }

    #[test]
    fn policies_choose_whether_to_restart() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut s = sup(Strategy::OneForOne, RestartPolicy::Transient);
        assert!(s.on_exit(0, Exit::Normal, ms(0), &mut rng).is_empty());
        assert_eq!(restarted(&s.on_exit(0, Exit::Crash, ms(0), &mut rng)), [0]);
        let mut s = sup(Strategy::OneForOne, RestartPolicy::Temporary);
        assert!(s.on_exit(0, Exit::Crash, ms(0), &mut rng).is_empty());
        let mut s = sup(Strategy::OneForOne, RestartPolicy::Permanent);
        assert_eq!(restarted(&s.on_exit(0, Exit::Normal, ms(0), &mut rng)), [0]);
    }

    #[test]
    fn intensity_exceeded_escalates_exactly_once() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut s = sup(Strategy::OneForOne, RestartPolicy::Permanent);
        for t in [0, 1_000, 2_000] {
            assert_eq!(restarted(&s.on_exit(0, Exit::Crash, ms(t), &mut rng)), [0]);
        }
        assert_eq!(
            s.on_exit(1, Exit::Crash, ms(3_000), &mut rng),
            [Command::Escalate]
        );
        assert!(s.escalated());
        assert!(
            s.on_exit(2, Exit::Crash, ms(3_100), &mut rng).is_empty(),
            "only once"
        );
        s.reset();
        assert_eq!(
            restarted(&s.on_exit(0, Exit::Crash, ms(3_200), &mut rng)),
            [0]
        );
    }

    #[test]
    fn restarts_outside_the_period_do_not_count() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut s = sup(Strategy::OneForOne, RestartPolicy::Permanent);
        // Three restarts 2 s apart never have more than three in any 5 s window... until
        // the fourth lands within 5 s of the first two.
        for t in [0, 2_000, 4_000] {
            assert_eq!(restarted(&s.on_exit(0, Exit::Crash, ms(t), &mut rng)), [0]);
        }
        assert_eq!(
            restarted(&s.on_exit(0, Exit::Crash, ms(6_000), &mut rng)),
            [0],
            "t=0 has aged out"
        );
        assert_eq!(
            s.on_exit(0, Exit::Crash, ms(6_500), &mut rng),
            [Command::Escalate]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = SupervisorOptions {
            max_restarts: 20,
            period: Duration::from_secs(60),
            jitter: 0.0,
            ..SupervisorOptions::default()
        };
        let mut s = Supervisor::new(options, 1).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..9)
            .map(
                |i| match s.on_exit(0, Exit::Crash, ms(i), &mut rng).as_slice() {
                    [Command::Restart { after, .. }] => *after,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        let expected = [0, 10, 20, 40, 80, 160, 320, 640, 1000];
        assert_eq!(delays, expected.map(ms));
    }

    #[test]
    fn backoff_is_counted_per_child() {
        let options = SupervisorOptions {
            max_restarts: 20,
            jitter: 0.0,
            ..SupervisorOptions::default()
        };
        let mut s = Supervisor::new(options, 3).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut after = |child: usize, t: u64| match s
            .on_exit(child, Exit::Crash, ms(t), &mut rng)
            .as_slice()
        {
            [Command::Restart { after, .. }] => *after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(0, 0), ms(0));
        assert_eq!(after(0, 1), ms(10));
        assert_eq!(
            after(1, 2),
            ms(0),
            "a sibling's first crash restarts at once"
        );
        assert_eq!(after(2, 3), ms(0));
        assert_eq!(after(0, 4), ms(20), "child 0 is crash-looping");
        assert_eq!(after(0, 6_000), ms(0), "a quiet period ends the burst");
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_follows_the_seed() {
        let options = SupervisorOptions {
            max_restarts: 1_000,
            ..SupervisorOptions::default()
        };
        let run = |seed: u64| {
            let mut s = Supervisor::new(options, 1).unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            s.on_exit(0, Exit::Crash, ms(0), &mut rng);
            match s.on_exit(0, Exit::Crash, ms(1), &mut rng).as_slice() {
                [Command::Restart { after, .. }] => *after,
                other => panic!("{other:?}"),
            }
        };
        for seed in 0..100 {
            let d = run(seed).as_secs_f64();
            assert!((0.008..=0.012).contains(&d), "{d}");
            assert_eq!(run(seed), run(seed));
        }
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = |o: SupervisorOptions| Supervisor::new(o, 1).unwrap_err().to_string();
        let d = SupervisorOptions::default();
        assert!(
            bad(SupervisorOptions {
                period: Duration::ZERO,
                max_restarts: 0,
                ..d
            })
            .contains("period 0ns")
        );
        assert!(
            bad(SupervisorOptions {
                max_restarts: 0,
                ..d
            })
            .contains("max-restarts 0")
        );
        assert!(
            bad(SupervisorOptions {
                multiplier: 0.5,
                ..d
            })
            .contains("multiplier 0.5")
        );
        assert!(bad(SupervisorOptions { jitter: 1.5, ..d }).contains("jitter 1.5"));
        let backwards = SupervisorOptions {
            initial_backoff: ms(5_000),
            max_backoff: ms(1_000),
            ..d
        };
        assert!(bad(backwards).contains("exceeds max-backoff"));
    }
}
