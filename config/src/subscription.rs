//! Subscriptions as deliveries use them: the checks every subscription passes before it is
//! served (declarative ones at load time and on every pushed snapshot, programmatic ones when
//! the app lists them), and its routing rules compiled to CEL programs.
//!
//! A rule's `match` is a CEL expression over the CloudEvent, bound as `event`
//! (`event.type == "order" && event.data.total > 100`). Rules are tried in order; the first
//! that evaluates to `true` names the path; an empty `match` matches every event; when no
//! rule matches, `routes.default` is used. A rule whose evaluation fails (a field the event
//! does not have, a type mismatch) does not match.

use std::fmt;

use crate::dapr::{BulkSubscribe, Subscription, SubscriptionRoutes};

/// Rules one subscription may have.
pub const MAX_RULES: usize = 100;
/// Length of one `match` expression, at most.
pub const MAX_EXPRESSION: usize = 4096;
/// Entries one bulk delivery may carry, at most.
pub const MAX_BULK_MESSAGES: u32 = 1000;

/// Compiled routing rules.
pub struct Routes {
    rules: Vec<(Option<cel::Program>, String)>,
    default: Option<String>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field(
                "rules",
                &self.rules.iter().map(|(_, path)| path).collect::<Vec<_>>(),
            )
            .field("default", &self.default)
            .finish()
    }
}

impl Routes {
    /// Compiles `routes`; the error is `(field, what is wrong)` with the field's path inside
    /// the resource, e.g. `("spec.routes.rules[1].match", "Syntax error: …")`.
    pub fn compile(routes: &SubscriptionRoutes) -> Result<Routes, (String, String)> {
        if routes.rules.len() > MAX_RULES {
            return Err((
                "spec.routes.rules".into(),
                format!(
                    "{} rules; at most {MAX_RULES} are allowed",
                    routes.rules.len()
                ),
            ));
        }
        let mut rules = Vec::with_capacity(routes.rules.len());
        for (i, rule) in routes.rules.iter().enumerate() {
            let field = |name: &str| format!("spec.routes.rules[{i}].{name}");
            if rule.path.trim().is_empty() {
                return Err((
                    field("path"),
                    "empty; give the app path to deliver to".into(),
                ));
            }
            let expression = rule.match_expr.trim();
            let program = if expression.is_empty() {
                None
            } else {
                Some(compile_expression(expression).map_err(|e| (field("match"), e))?)
            };
            rules.push((program, rule.path.trim().to_string()));
        }
        let default = routes
            .default
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        if rules.is_empty() && default.is_none() {
            return Err((
                "spec.routes".into(),
                "no default route and no rules; give routes.default (or v1alpha1's route) or routes.rules".into(),
            ));
        }
        Ok(Routes { rules, default })
    }

    /// The path `event` goes to, or `None` when no rule matches and there is no default.
    pub fn route(&self, event: &serde_json::Value) -> Option<&str> {
        if self.rules.iter().all(|(program, _)| program.is_none()) {
            return self
                .rules
                .first()
                .map(|(_, path)| path.as_str())
                .or(self.default.as_deref());
        }
        let mut context = cel::Context::default();
        let bound = cel::to_value(event)
            .ok()
            .and_then(|value| context.add_variable("event", value).ok());
        for (program, path) in &self.rules {
            let matched = match program {
                None => true,
                Some(program) => {
                    bound.is_some()
                        && matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
                }
            };
            if matched {
                return Some(path);
            }
        }
        self.default.as_deref()
    }

    /// Every path this subscription may deliver to.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(|(_, path)| path.as_str())
            .chain(self.default.as_deref())
    }
}

pub(crate) fn compile_expression(expression: &str) -> Result<cel::Program, String> {
    if expression.len() > MAX_EXPRESSION {
        return Err(format!(
            "{} bytes; a CEL expression may have at most {MAX_EXPRESSION}",
            expression.len()
        ));
    }
    // The parser recurses on nesting; bound it before it sees the text.
    let depth = expression
        .bytes()
        .scan(0i32, |depth, b| {
            match b {
                b'(' | b'[' | b'{' => *depth += 1,
                b')' | b']' | b'}' => *depth -= 1,
                _ => {}
            }
            Some(*depth)
        })
        .max()
        .unwrap_or(0);
    if depth > 32 {
        return Err(format!(
            "brackets nested {depth} deep; at most 32 are allowed"
        ));
    }
    std::panic::catch_unwind(|| cel::Program::compile(expression))
        .map_err(|_| "the CEL parser failed on this expression".to_string())?
        .map_err(|e| {
            format!(
                "invalid CEL expression {expression:?}: {}",
                e.to_string().replace('\n', " ")
            )
        })
}

/// Checks a subscription as the sidecar will serve it; the error is `(field, what is wrong)`.
pub fn check(subscription: &Subscription) -> Result<(), (String, String)> {
    let spec = &subscription.spec;
    if spec.pubsubname.trim().is_empty() {
        return Err((
            "spec.pubsubname".into(),
            "empty; name the pub/sub component".into(),
        ));
    }
    if spec.topic.trim().is_empty() {
        return Err(("spec.topic".into(), "empty; name the topic".into()));
    }
    Routes::compile(&spec.routes)?;
    if let Some(bulk) = &spec.bulk_subscribe {
        check_bulk(bulk)?;
    }
    Ok(())
}

fn check_bulk(bulk: &BulkSubscribe) -> Result<(), (String, String)> {
    if let Some(count) = bulk.max_messages_count {
        if count == 0 || count > MAX_BULK_MESSAGES {
            return Err((
                "spec.bulkSubscribe.maxMessagesCount".into(),
                format!("{count}; expected 1 to {MAX_BULK_MESSAGES}"),
            ));
        }
    }
    if let Some(ms) = bulk.max_await_duration_ms {
        if ms > 60_000 {
            return Err((
                "spec.bulkSubscribe.maxAwaitDurationMs".into(),
                format!("{ms}; at most 60000 (a minute)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dapr::SubscriptionRule;

    fn routes(rules: &[(&str, &str)], default: Option<&str>) -> SubscriptionRoutes {
        SubscriptionRoutes {
            rules: rules
                .iter()
                .map(|(m, p)| SubscriptionRule {
                    match_expr: m.to_string(),
                    path: p.to_string(),
                })
                .collect(),
            default: default.map(str::to_string),
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_the_default_catches_the_rest() {
        let compiled = Routes::compile(&routes(
            &[
                (r#"event.type == "order" && event.data.total > 100"#, "/big"),
                (r#"event.type == "order""#, "/orders"),
            ],
            Some("/other"),
        ))
        .unwrap();
        let event = |t: &str, total: i64| serde_json::json!({"type": t, "data": {"total": total}});
        assert_eq!(compiled.route(&event("order", 150)), Some("/big"));
        assert_eq!(compiled.route(&event("order", 5)), Some("/orders"));
        assert_eq!(compiled.route(&event("refund", 500)), Some("/other"));
        // `data.total` is missing: that rule does not match, the next one does.
        assert_eq!(
            compiled.route(&serde_json::json!({"type": "order", "data": "text"})),
            Some("/orders")
        );
    }

    #[test]
    fn no_match_and_no_default_means_no_route() {
        let compiled = Routes::compile(&routes(&[(r#"event.type == "a""#, "/a")], None)).unwrap();
        assert_eq!(compiled.route(&serde_json::json!({"type": "b"})), None);
    }

    #[test]
    fn an_invalid_expression_names_its_rule() {
        let error =
            Routes::compile(&routes(&[("true", "/a"), ("event.type ==", "/b")], None)).unwrap_err();
        assert_eq!(error.0, "spec.routes.rules[1].match");
        assert!(error.1.contains("invalid CEL expression"), "{}", error.1);
        let deep = format!("{}true{}", "(".repeat(500), ")".repeat(500));
        let error = Routes::compile(&routes(&[(&deep, "/a")], None)).unwrap_err();
        assert!(error.1.contains("nested 500 deep"), "{}", error.1);
        let error = Routes::compile(&routes(&[], None)).unwrap_err();
        assert_eq!(error.0, "spec.routes");
    }
}
