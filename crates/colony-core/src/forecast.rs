//! Arrivals over the next minutes, sans-IO: additive Holt-Winters and its measured accuracy.
//!
//! The predictive scaling policy ([`crate::scaling`]) needs two things: how many tasks will
//! arrive over the next horizon, and how far to trust that number. A [`Forecaster`] is fed
//! one sample per interval (arrivals in the interval just ended) and answers both: a forecast
//! from level, trend and season, smoothed exponentially, and the mean absolute percentage
//! error of its own one-step forecasts over a recent window. The caller owns the interval and
//! the clock; nothing here knows what time it is.
//!
//! Written here rather than taken from `augurs`: its ETS models have no seasonality yet, and
//! it brings nalgebra and a second `rand`.
//!
//! ```
//! use colony_core::forecast::{ForecastOptions, Forecaster};
//!
//! let mut f = Forecaster::new(ForecastOptions::default()).unwrap();
//! for arrivals in [10.0, 12.0, 14.0, 16.0] {
//!     f.observe(arrivals);
//! }
//! // A steady ramp of 2 per interval: 18 next, 18 + 20 + 22 over the next three.
//! assert_eq!(f.predict(1), Some(18.0));
//! assert_eq!(f.predict_total(3), Some(60.0));
//! assert_eq!(f.mape(), Some(0.0));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Additive Holt-Winters (level, trend, season) over equally spaced samples (arrivals per
/// interval).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ForecastOptions {
    /// Weight of a new sample in the level: higher follows changes sooner, and noise too.
    pub alpha: f64,
    /// Weight of a new level change in the trend.
    pub beta: f64,
    /// Weight of a new sample in its position's seasonal index.
    pub gamma: f64,
    /// Samples per season; 0 or 1 = no season.
    pub season: usize,
    /// Samples kept to measure accuracy.
    pub accuracy_window: usize,
}

impl Default for ForecastOptions {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            beta: 0.1,
            gamma: 0.3,
            season: 0,
            accuracy_window: 30,
        }
    }
}

/// Settings that make no sense, with the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("forecast {field} {got} is out of range: allowed above 0.0 and up to 1.0")]
    Smoothing { field: &'static str, got: f64 },
    #[error("forecast accuracy-window {got} is out of range: allowed 1 and up")]
    AccuracyWindow { got: usize },
}

impl ForecastOptions {
    pub fn validate(&self) -> Result<(), Error> {
        for (field, got) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("gamma", self.gamma),
        ] {
            // Written so that NaN is refused too.
            if !(got > 0.0 && got <= 1.0) {
                return Err(Error::Smoothing { field, got });
            }
        }
        if self.accuracy_window == 0 {
            return Err(Error::AccuracyWindow {
                got: self.accuracy_window,
            });
        }
        Ok(())
    }

    /// Samples per season, or `None` without one.
    fn period(&self) -> Option<usize> {
        (self.season >= 2).then_some(self.season)
    }
}

/// Largest sample taken as given; larger ones are taken as this. Far beyond any real count of
/// arrivals, it keeps every sum below finite range.
const MAX_SAMPLE: f64 = 1e15;

/// Bound on level, trend and seasonal indices. Some corners of (0, 1]³ make Holt-Winters
/// unstable (γ > 1 − α, notably); this bound keeps the arithmetic finite there rather than
/// narrowing the options' ranges.
const MAX_STATE: f64 = 1e18;

/// Largest error one sample contributes to [`Forecaster::mape`] (10 000 %), so one near-zero
/// actual value cannot make the measure infinite. A forecast that far off is useless anyway.
const MAX_ERROR: f64 = 100.0;

/// Forecasts of one series, and how good its recent forecasts were.
#[derive(Clone, Debug)]
pub struct Forecaster {
    options: ForecastOptions,
    samples: u64,
    /// Samples kept until there are enough to start the model.
    warmup: Vec<f64>,
    model: Option<Model>,
    /// Per scored sample, newest last: the one-step forecast's absolute error as a fraction of
    /// the actual value, or `None` when the actual value was 0.
    errors: VecDeque<Option<f64>>,
}

/// Holt-Winters state after the last sample.
#[derive(Clone, Debug)]
struct Model {
    level: f64,
    trend: f64,
    /// Seasonal index per position in the season; empty without a season.
    season: Vec<f64>,
    /// Position in the season of the next sample.
    next: usize,
}

impl Model {
    /// From the first two samples: level at the second, trend between them.
    fn from_pair(first: f64, second: f64) -> Self {
        Self {
            level: second,
            trend: second - first,
            season: Vec::new(),
            next: 0,
        }
    }

    /// From the first two seasons: trend from their means; each position's index is its
    /// deviation from that trend line, averaged over both seasons so that one noisy sample
    /// weighs half as much. The indices sum to zero by construction.
    fn from_seasons(samples: &[f64], period: usize) -> Self {
        let m = period as f64;
        let first = samples[..period].iter().sum::<f64>() / m;
        let second = samples[period..2 * period].iter().sum::<f64>() / m;
        let trend = (second - first) / m;
        // The trend line passes through each season's mean at that season's middle.
        let middle = (m - 1.0) / 2.0;
        let line = |i: usize| first + (i as f64 - middle) * trend;
        let season = (0..period)
            .map(|i| ((samples[i] - line(i)) + (samples[period + i] - line(period + i))) / 2.0)
            .collect();
        Self {
            level: line(2 * period - 1),
            trend,
            season,
            next: 0,
        }
    }

    fn seasonal(&self, steps: usize) -> f64 {
        if self.season.is_empty() {
            return 0.0;
        }
        let m = self.season.len();
        self.season[(self.next + (steps - 1) % m) % m]
    }

    fn predict(&self, steps: usize) -> f64 {
        let value = self.level + steps as f64 * self.trend + self.seasonal(steps);
        value.max(0.0)
    }

    fn update(&mut self, value: f64, options: &ForecastOptions) {
        let ForecastOptions {
            alpha, beta, gamma, ..
        } = *options;
        let seasonal = self.seasonal(1);
        let level = alpha * (value - seasonal) + (1.0 - alpha) * (self.level + self.trend);
        let level = level.clamp(-MAX_STATE, MAX_STATE);
        let trend = beta * (level - self.level) + (1.0 - beta) * self.trend;
        self.trend = trend.clamp(-MAX_STATE, MAX_STATE);
        self.level = level;
        if !self.season.is_empty() {
            let index = gamma * (value - level) + (1.0 - gamma) * seasonal;
            self.season[self.next] = index.clamp(-MAX_STATE, MAX_STATE);
            self.next = (self.next + 1) % self.season.len();
        }
    }
}

impl Forecaster {
    pub fn new(options: ForecastOptions) -> Result<Self, Error> {
        options.validate()?;
        Ok(Self {
            options,
            samples: 0,
            warmup: Vec::new(),
            model: None,
            errors: VecDeque::new(),
        })
    }

    pub fn options(&self) -> &ForecastOptions {
        &self.options
    }

    /// One more sample (arrivals in the interval just ended).
    ///
    /// Arrivals are never negative: a negative or NaN value is taken as 0, and one above
    /// 10¹⁵ (infinity included) as 10¹⁵, so that a caller's bug cannot poison the model.
    pub fn observe(&mut self, value: f64) {
        let value = if value.is_nan() {
            0.0
        } else {
            value.clamp(0.0, MAX_SAMPLE)
        };
        self.samples += 1;
        match &mut self.model {
            Some(model) => {
                // Scored before the update: the error of the forecast the caller could have
                // acted on.
                let predicted = model.predict(1);
                let error =
                    (value > 0.0).then(|| ((predicted - value).abs() / value).min(MAX_ERROR));
                if self.errors.len() == self.options.accuracy_window {
                    self.errors.pop_front();
                }
                self.errors.push_back(error);
                model.update(value, &self.options);
            }
            None => {
                self.warmup.push(value);
                self.model = match self.options.period() {
                    None if self.warmup.len() == 2 => {
                        Some(Model::from_pair(self.warmup[0], self.warmup[1]))
                    }
                    Some(period) if self.warmup.len() == period.saturating_mul(2) => {
                        Some(Model::from_seasons(&self.warmup, period))
                    }
                    _ => None,
                };
                if self.model.is_some() {
                    self.warmup = Vec::new();
                }
            }
        }
    }

    /// Expected value `steps` samples ahead (1 = next interval); `None` until there is enough
    /// data (2 samples without season, 2 seasons with one), and for `steps` 0, which asks for
    /// the present rather than a forecast. Never negative.
    pub fn predict(&self, steps: usize) -> Option<f64> {
        if steps == 0 {
            return None;
        }
        self.model.as_ref().map(|m| m.predict(steps))
    }

    /// Sum of the next `steps` predictions (arrivals expected over that horizon); 0 for
    /// `steps` 0 once there is enough data. Costs one prediction per step: each is clamped at
    /// zero on its own, which a closed form would not do.
    pub fn predict_total(&self, steps: usize) -> Option<f64> {
        let model = self.model.as_ref()?;
        Some((1..=steps).map(|h| model.predict(h)).sum())
    }

    /// Mean absolute percentage error of the one-step-ahead predictions over the last
    /// `accuracy_window` samples, as a fraction (0.2 = 20 %); samples whose actual value is 0
    /// are skipped (and a window with none left gives `None`). One sample counts at most
    /// 100 (10 000 %).
    pub fn mape(&self) -> Option<f64> {
        let (sum, count) = self
            .errors
            .iter()
            .flatten()
            .fold((0.0, 0u32), |(sum, count), e| (sum + e, count + 1));
        (count > 0).then(|| sum / f64::from(count))
    }

    /// Samples observed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    use std::f64::consts::TAU;

    fn forecaster(season: usize) -> Forecaster {
        Forecaster::new(ForecastOptions {
            season,
            ..ForecastOptions::default()
        })
        .unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn settings_out_of_range_are_refused_with_their_field() {
        let ok = ForecastOptions::default();
        assert_eq!(ok.validate(), Ok(()));
        for (field, options) in [
            ("alpha", ForecastOptions { alpha: 0.0, ..ok }),
            ("beta", ForecastOptions { beta: 1.5, ..ok }),
            (
                "gamma",
                ForecastOptions {
                    gamma: f64::NAN,
                    ..ok
                },
            ),
        ] {
            let err = Forecaster::new(options).unwrap_err();
            assert!(matches!(err, Error::Smoothing { field: f, .. } if f == field));
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = ForecastOptions {
            accuracy_window: 0,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert_eq!(err, Error::AccuracyWindow { got: 0 });
        assert!(err.to_string().contains("accuracy-window"));
        // The edges of the ranges are allowed.
        let edge = ForecastOptions {
            alpha: 1.0,
            beta: 1.0,
            gamma: 1.0,
            accuracy_window: 1,
            ..ok
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn nothing_is_predicted_before_enough_data() {
        let mut f = forecaster(0);
        assert_eq!(
            (f.predict(1), f.predict_total(3), f.mape()),
            (None, None, None)
        );
        f.observe(4.0);
        assert_eq!(f.predict(1), None);
        f.observe(4.0);
        assert_eq!(f.predict(1), Some(4.0));
        assert_eq!(f.predict(0), None);
        assert_eq!(f.predict_total(0), Some(0.0));
        // Nothing scored yet: the first forecast was made only now.
        assert_eq!(f.mape(), None);
        assert_eq!(f.samples(), 2);

        // With a season of 4: two whole seasons first. Season 1 is no season.
        let mut f = forecaster(4);
        for i in 0..7 {
            f.observe(i as f64);
            assert_eq!(f.predict(1), None, "after {} samples", i + 1);
        }
        f.observe(7.0);
        assert!(f.predict(1).is_some());
        let mut f = forecaster(1);
        f.observe(1.0);
        f.observe(1.0);
        assert_eq!(f.predict(1), Some(1.0));
    }

    #[test]
    fn a_constant_series_is_predicted_exactly() {
        for season in [0, 6] {
            let mut f = forecaster(season);
            for _ in 0..50 {
                f.observe(7.0);
            }
            for h in [1, 5, 13] {
                assert!(close(f.predict(h).unwrap(), 7.0), "season {season} h {h}");
            }
            assert!(close(f.predict_total(10).unwrap(), 70.0));
            assert!(f.mape().unwrap() < 1e-12);
            assert_eq!(f.samples(), 50);
        }
    }

    #[test]
    fn a_ramp_is_followed_and_the_error_shrinks() {
        let mut f = forecaster(0);
        for _ in 0..20 {
            f.observe(10.0);
        }
        // Arrivals start climbing by 2 per interval.
        let error = |f: &Forecaster, actual: f64| (f.predict(1).unwrap() - actual).abs();
        let mut errors = Vec::new();
        for t in 1..=60 {
            let actual = 10.0 + 2.0 * t as f64;
            errors.push(error(&f, actual));
            f.observe(actual);
        }
        assert!(errors[0] > 1.0, "{errors:?}");
        assert!(errors[10] < errors[2], "{errors:?}");
        assert!(errors[59] < errors[10], "{errors:?}");
        // By the end the forecast is within 1 % of the ramp, several steps ahead too.
        assert!(errors[59] / 130.0 < 0.01, "{errors:?}");
        let ahead = f.predict(5).unwrap();
        assert!((ahead - 140.0).abs() / 140.0 < 0.01, "{ahead}");
    }

    /// 100 ± 50 over a 12-sample season, plus uniform noise of ±5.
    fn seasonal(rng: &mut SmallRng, t: usize) -> f64 {
        100.0 + 50.0 * (TAU * t as f64 / 12.0).sin() + rng.random_range(-5.0..5.0)
    }

    #[test]
    fn a_seasonal_series_is_learned_and_the_season_pays() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut with = forecaster(12);
        let mut without = forecaster(0);
        // Five seasons: two to start, three scored (the window holds the last 30 samples).
        for t in 0..60 {
            let value = seasonal(&mut rng, t);
            with.observe(value);
            without.observe(value);
        }
        let (with, without) = (with.mape().unwrap(), without.mape().unwrap());
        assert!(with < 0.1, "MAPE with season {with}");
        assert!(
            without > 2.0 * with,
            "MAPE {without} without season, {with} with"
        );
    }

    #[test]
    fn a_season_is_forecast_a_whole_season_ahead() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut f = forecaster(12);
        for t in 0..96 {
            f.observe(seasonal(&mut rng, t));
        }
        for h in 1..=12 {
            let truth = 100.0 + 50.0 * (TAU * (95 + h) as f64 / 12.0).sin();
            let got = f.predict(h).unwrap();
            assert!((got - truth).abs() < 12.0, "h {h}: {got} vs {truth}");
        }
        let total = f.predict_total(12).unwrap();
        assert!((total - 1200.0).abs() < 60.0, "{total}");
    }

    #[test]
    fn a_falling_series_is_never_predicted_below_zero() {
        let mut f = forecaster(0);
        for value in [100.0, 60.0, 20.0, 0.0] {
            f.observe(value);
        }
        assert_eq!(f.predict(1), Some(0.0));
        assert_eq!(f.predict(30), Some(0.0));
        assert_eq!(f.predict_total(30), Some(0.0));
        // A caller's negative or NaN sample counts as no arrivals.
        let mut g = forecaster(0);
        for value in [-5.0, f64::NAN] {
            g.observe(value);
        }
        assert_eq!(g.predict(1), Some(0.0));
    }

    #[test]
    fn zero_actuals_are_left_out_of_the_error_and_the_window_slides() {
        let options = ForecastOptions {
            alpha: 1.0,
            beta: 1.0,
            accuracy_window: 2,
            ..ForecastOptions::default()
        };
        let mut f = Forecaster::new(options).unwrap();
        // With alpha = beta = 1 the forecast extrapolates the last two samples.
        f.observe(0.0);
        f.observe(0.0);
        f.observe(0.0);
        assert_eq!(f.mape(), None, "only zeros scored");
        f.observe(10.0); // forecast 0: 100 % off
        assert_eq!(f.mape(), Some(1.0));
        f.observe(15.0); // forecast 20: a third off
        assert!(close(f.mape().unwrap(), (1.0 + 5.0 / 15.0) / 2.0));
        f.observe(20.0); // forecast 20: exact; the 100 % has left the window
        assert!(close(f.mape().unwrap(), (5.0 / 15.0) / 2.0));
        f.observe(0.0); // forecast 25, actual 0: skipped, yet it pushes out the third
        assert_eq!(f.mape(), Some(0.0));
        f.observe(0.0);
        assert_eq!(f.mape(), None, "the window holds only zeros");
    }

    fn sample() -> impl Strategy<Value = f64> {
        use proptest::num::f64::{NORMAL, POSITIVE, SUBNORMAL, ZERO};
        prop_oneof![
            Just(0.0),
            0.0..1_000.0,
            0.0..f64::MAX,
            POSITIVE | NORMAL | SUBNORMAL | ZERO,
        ]
    }

    fn weight() -> impl Strategy<Value = f64> {
        prop_oneof![Just(1.0), 1e-6..=1.0f64]
    }

    proptest! {
        #[test]
        fn any_non_negative_finite_input_gives_finite_non_negative_forecasts(
            alpha in weight(),
            beta in weight(),
            gamma in weight(),
            season in 0usize..6,
            accuracy_window in 1usize..10,
            values in prop::collection::vec(sample(), 0..80),
            steps in 1usize..40,
        ) {
            let options = ForecastOptions { alpha, beta, gamma, season, accuracy_window };
            let mut f = Forecaster::new(options).unwrap();
            for value in values {
                f.observe(value);
                if let Some(p) = f.predict(steps) {
                    prop_assert!(p.is_finite() && p >= 0.0, "{} steps ahead: {}", steps, p);
                }
                if let Some(total) = f.predict_total(steps) {
                    prop_assert!(total.is_finite() && total >= 0.0, "total {}", total);
                }
                if let Some(mape) = f.mape() {
                    prop_assert!(mape.is_finite() && mape >= 0.0, "mape {}", mape);
                }
            }
        }
    }
}
