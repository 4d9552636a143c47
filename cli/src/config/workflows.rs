//! `[[workflows]]` of `outpost.toml`, as in wrangler.toml: an entry without
//! `script_name` (or naming this worker) defines a workflow whose class
//! this worker exports, and binds it; one with another worker's
//! `script_name` only binds that worker's workflow.

use anyhow::bail;
use outpost_workflows::policy::{DEFAULT_CONCURRENCY, DEFAULT_STEP_LIMIT, MAX_STEP_LIMIT};
use outpost_workflows::Definition;
use serde::Deserialize;

use super::is_js_identifier;

/// The most instances of one workflow an `outpost.toml` may let run at once.
const MAX_CONCURRENCY: u32 = 10_000;

/// One `[[workflows]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    /// The workflow's name, node-wide.
    pub name: String,
    /// The name on `env`.
    pub binding: String,
    /// The `WorkflowEntrypoint` class.
    pub class_name: String,
    /// The worker exporting the class, if not this one.
    pub script_name: Option<String>,
    #[serde(default)]
    pub limits: WorkflowLimitsConfig,
    /// Outpost's own: instances running at once (default 100); the others
    /// wait their turn, queued.
    pub max_concurrency: Option<u32>,
}

/// `limits = { steps = N }`, as in wrangler.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowLimitsConfig {
    /// Steps an instance may take (default 10,000; at most 25,000).
    pub steps: Option<u32>,
}

/// A workflow name: 1 to 64 letters, digits, `-` and `_`.
fn is_workflow_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The bindings of `worker`'s `[[workflows]]` entries, and the workflows it
/// defines.
pub(super) fn workflows(
    entries: &[WorkflowConfig],
    worker: &str,
) -> anyhow::Result<(Vec<outpost_runtime::WorkflowBinding>, Vec<Definition>)> {
    let (mut bindings, mut definitions) = (Vec::new(), Vec::<Definition>::new());
    for entry in entries {
        let name = &entry.name;
        if !is_workflow_name(name) {
            bail!("the workflow name {name:?} must be 1 to 64 letters, digits, '-' or '_'");
        }
        if !is_js_identifier(&entry.class_name) {
            bail!("workflow {name:?}: class_name {:?} is not a JavaScript class name", entry.class_name);
        }
        let script = entry.script_name.clone().unwrap_or_else(|| worker.to_string());
        if script == worker {
            if definitions.iter().any(|d| d.name == *name) {
                bail!("the workflow {name:?} is defined twice");
            }
            let step_limit = entry.limits.steps.unwrap_or(DEFAULT_STEP_LIMIT);
            if !(1..=MAX_STEP_LIMIT).contains(&step_limit) {
                bail!("workflow {name:?}: limits.steps is 1 to {MAX_STEP_LIMIT}, got {step_limit}");
            }
            let concurrency = entry.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY);
            if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
                bail!("workflow {name:?}: max_concurrency is 1 to {MAX_CONCURRENCY}, got {concurrency}");
            }
            definitions.push(Definition {
                name: name.clone(),
                worker: worker.to_string(),
                class_name: entry.class_name.clone(),
                step_limit,
                concurrency,
            });
        } else if entry.limits.steps.is_some() || entry.max_concurrency.is_some() {
            bail!("workflow {name:?}: limits and max_concurrency belong with the worker defining it ({script:?})");
        }
        bindings.push(outpost_runtime::WorkflowBinding {
            binding: entry.binding.clone(),
            workflow: name.clone(),
            script,
        });
    }
    Ok((bindings, definitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(toml: &str) -> Vec<WorkflowConfig> {
        #[derive(Deserialize)]
        struct File {
            workflows: Vec<WorkflowConfig>,
        }
        toml::from_str::<File>(toml).unwrap().workflows
    }

    #[test]
    fn an_entry_without_script_name_defines_and_binds() {
        let (bindings, definitions) = workflows(
            &entries(
                r#"
                [[workflows]]
                name = "orders"
                binding = "ORDERS"
                class_name = "OrderFlow"
                limits = { steps = 50 }
                [[workflows]]
                name = "emails"
                binding = "EMAILS"
                class_name = "EmailFlow"
                script_name = "mailer"
                "#,
            ),
            "shop",
        )
        .unwrap();
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[1].script, "mailer");
        assert_eq!(definitions.len(), 1);
        assert_eq!(definitions[0].step_limit, 50);
        assert_eq!(definitions[0].concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(definitions[0].worker, "shop");
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for (toml, expected) in [
            (
                r#"[[workflows]]
name = "a b"
binding = "A"
class_name = "A""#,
                "workflow name",
            ),
            (
                r#"[[workflows]]
name = "a"
binding = "A"
class_name = "not-a-class""#,
                "class_name",
            ),
            (
                r#"[[workflows]]
name = "a"
binding = "A"
class_name = "A"
limits = { steps = 0 }"#,
                "limits.steps",
            ),
            (
                r#"[[workflows]]
name = "a"
binding = "A"
class_name = "A"
[[workflows]]
name = "a"
binding = "B"
class_name = "B""#,
                "defined twice",
            ),
        ] {
            let err = workflows(&entries(toml), "w").unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let unknown = toml::from_str::<toml::Value>("x = 1").unwrap();
        drop(unknown);
        assert!(toml::from_str::<WorkflowConfig>("name = \"a\"\nbinding = \"A\"\nclass_name = \"A\"\nschedules = []")
            .is_err());
    }
}
