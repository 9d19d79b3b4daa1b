//! A circuit breaker's `trip` expression (Dapr `Resiliency` `circuitBreakers.<name>.trip`):
//! CEL over the breaker's counts, compiled once, as daprd reads it.

use crate::subscription::compile_expression;

/// What a breaker has counted since it last closed (or since its `interval` began).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub total_successes: u64,
    pub total_failures: u64,
    pub consecutive_successes: u64,
    pub consecutive_failures: u64,
}

/// A compiled trip expression.
pub struct Trip {
    program: cel::Program,
    text: String,
}

impl std::fmt::Debug for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// daprd's trip expression when a breaker names none.
pub const DEFAULT_TRIP: &str = "consecutiveFailures > 5";

impl Trip {
    /// Compiles `text`; the error says what is wrong with it.
    pub fn compile(text: &str) -> Result<Trip, String> {
        Ok(Trip {
            program: compile_expression(text)?,
            text: text.to_string(),
        })
    }

    /// Whether the counts trip the breaker (an expression that does not give a boolean never
    /// does).
    pub fn trips(&self, counts: &Counts) -> bool {
        let mut context = cel::Context::default();
        for (name, value) in [
            ("requests", counts.requests),
            ("totalSuccesses", counts.total_successes),
            ("totalFailures", counts.total_failures),
            ("consecutiveSuccesses", counts.consecutive_successes),
            ("consecutiveFailures", counts.consecutive_failures),
        ] {
            context.add_variable_from_value(
                name,
                cel::Value::Int(i64::try_from(value).unwrap_or(i64::MAX)),
            );
        }
        matches!(self.program.execute(&context), Ok(cel::Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_its_expression_over_the_counts() {
        let trip = Trip::compile("consecutiveFailures > 3").unwrap();
        let mut counts = Counts {
            consecutive_failures: 3,
            ..Counts::default()
        };
        assert!(!trip.trips(&counts));
        counts.consecutive_failures = 4;
        assert!(trip.trips(&counts));
        let ratio = Trip::compile("requests >= 10 && totalFailures * 2 > requests").unwrap();
        let half = Counts {
            requests: 10,
            total_failures: 6,
            ..Counts::default()
        };
        assert!(ratio.trips(&half));
        assert!(Trip::compile("consecutiveFailures >").is_err());
        assert!(
            !Trip::compile("\"yes\"").unwrap().trips(&half),
            "not a boolean"
        );
    }
}
