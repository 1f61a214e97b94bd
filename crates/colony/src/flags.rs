//! Value parsers shared by every command's flags.
//!
//! Every floating-point flag goes through [`Float`]: `f64::from_str` accepts `NaN`, `inf` and
//! `1e999`, which then panic in `Duration::from_secs_f64` or silently defeat a range check
//! (every comparison with NaN is false). Refusing them while parsing gives clap's usage error
//! (exit code 2) naming the flag, the value and the allowed range.

use clap::{
    Arg, Command,
    builder::TypedValueParser,
    error::{Error, ErrorKind},
};
use std::ffi::OsStr;

/// A finite `f64` within `min..=max`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Float {
    min: f64,
    max: f64,
}

impl Float {
    /// Values from `min` to `max`, both included.
    pub(crate) const fn new(min: f64, max: f64) -> Self {
        Self { min, max }
    }

    /// Checks one value; the message names the value and the range, not the flag.
    pub(crate) fn check(&self, text: &str) -> Result<f64, String> {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?;
        if !value.is_finite() {
            return Err(format!("{text} is not a finite number"));
        }
        if value < self.min || value > self.max {
            return Err(format!(
                "{text} is out of range: allowed {}..={}",
                self.min, self.max
            ));
        }
        Ok(value)
    }
}

impl TypedValueParser for Float {
    type Value = f64;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<f64, Error> {
        let flag = arg.map_or_else(|| "the value".to_owned(), |a| format!("'{a}'"));
        // The command is already built while its arguments are parsed.
        let fail = |why: String| {
            Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {flag}: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| fail(format!("{value:?} is not UTF-8")))?;
        self.check(text).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_finite_number_in_range() {
        let f = Float::new(0.0, 1.0);
        assert_eq!(f.check("0.5"), Ok(0.5));
        assert_eq!(f.check(" 1 "), Ok(1.0));
        assert_eq!(f.check("0"), Ok(0.0));
        for bad in ["NaN", "nan", "inf", "-inf", "1e999", "infinity"] {
            let e = f.check(bad).unwrap_err();
            assert!(e.contains("not a finite number"), "{bad}: {e}");
        }
        assert!(f.check("1.5").unwrap_err().contains("allowed 0..=1"));
        assert!(f.check("-0.1").unwrap_err().contains("out of range"));
        assert!(f.check("ten").unwrap_err().contains("not a number"));
    }
}
