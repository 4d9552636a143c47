//! `outpost workflows ...`: ask a running node (`outpost dev` or `outpost
//! serve`) about its workflows through the control socket in its data
//! directory, as wrangler's `workflows` commands ask Cloudflare. Printing
//! only; the node answers (`outpost_node::control`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use outpost_node::control::ControlRequest;
use serde_json::Value;

#[derive(Args)]
pub struct WorkflowsArgs {
    /// The node's data directory (`outpost dev`'s default is `.outpost` in
    /// the worker's directory; `outpost serve`'s is node.toml's `data_dir`).
    #[arg(long, global = true, default_value = ".outpost")]
    data_dir: PathBuf,
    /// Print the node's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: WorkflowsCommand,
}

#[derive(Subcommand)]
enum WorkflowsCommand {
    /// The node's workflows, with their instances counted by status.
    List,
    /// A workflow's instances.
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// Creates an instance of a workflow.
    Trigger {
        workflow: String,
        /// The instance's parameters, as JSON (its `event.payload`).
        params: Option<String>,
        /// The instance's id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum InstancesCommand {
    /// A workflow's instances, newest first.
    List { workflow: String },
    /// One instance: status, timings, output or error, and each step with its attempts.
    Describe { workflow: String, id: String },
}

pub fn run(args: WorkflowsArgs) -> anyhow::Result<()> {
    let request = match &args.command {
        WorkflowsCommand::List => ControlRequest::ListWorkflows,
        WorkflowsCommand::Instances(InstancesCommand::List { workflow }) => {
            ControlRequest::ListInstances { workflow: workflow.clone() }
        }
        WorkflowsCommand::Instances(InstancesCommand::Describe { workflow, id }) => {
            ControlRequest::DescribeInstance { workflow: workflow.clone(), id: id.clone() }
        }
        WorkflowsCommand::Trigger { workflow, params, id } => {
            if let Some(params) = params {
                serde_json::from_str::<Value>(params).context("the parameters are not JSON")?;
            }
            ControlRequest::Trigger { workflow: workflow.clone(), id: id.clone(), params: params.clone() }
        }
    };
    let answer = crate::control_client::ask(&args.data_dir, &request)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no node is running with data directory {} (start `outpost dev` or `outpost serve`, or pass --data-dir)",
            args.data_dir.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    match args.command {
        WorkflowsCommand::List => print_workflows(&answer),
        WorkflowsCommand::Instances(InstancesCommand::List { .. }) => print_instances(&answer),
        WorkflowsCommand::Instances(InstancesCommand::Describe { workflow, .. }) => describe(&workflow, &answer),
        WorkflowsCommand::Trigger { workflow, .. } => {
            println!("created instance {} of workflow {workflow}", answer.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

fn time(ms: &Value) -> String {
    ms.as_i64().map_or_else(|| "-".to_string(), outpost_cron::format_utc)
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn print_workflows(answer: &Value) {
    let rows = answer.as_array().into_iter().flatten().map(|workflow| {
        let counts = workflow["instances"].as_object().map_or(String::new(), |counts| {
            counts.iter().map(|(status, n)| format!("{status}: {n}")).collect::<Vec<_>>().join(", ")
        });
        let text = |key: &str| workflow[key].as_str().unwrap_or("(not deployed)").to_string();
        vec![text("name"), text("worker"), text("className"), counts]
    });
    print_table(&["NAME", "WORKER", "CLASS", "INSTANCES"], rows.collect());
}

fn print_instances(answer: &Value) {
    let rows = answer.as_array().into_iter().flatten().map(|instance| {
        vec![
            instance["id"].as_str().unwrap_or_default().to_string(),
            instance["status"].as_str().unwrap_or_default().to_string(),
            time(&instance["createdMs"]),
            time(&instance["endedMs"]),
        ]
    });
    print_table(&["ID", "STATUS", "CREATED", "ENDED"], rows.collect());
}

fn describe(workflow: &str, answer: &Value) {
    let instance = &answer["instance"];
    println!("Workflow:   {workflow}");
    println!("Instance:   {}", instance["id"].as_str().unwrap_or_default());
    println!("Status:     {}", instance["status"].as_str().unwrap_or_default());
    println!("Created:    {}", time(&instance["createdMs"]));
    println!("Started:    {}", time(&instance["startedMs"]));
    println!("Ended:      {}", time(&instance["endedMs"]));
    if let (Some(start), Some(end)) = (instance["startedMs"].as_u64(), instance["endedMs"].as_u64()) {
        println!("Duration:   {:.3} s", end.saturating_sub(start) as f64 / 1000.0);
    }
    if let Some(at) = instance["wakeAtMs"].as_i64() {
        println!("Wakes at:   {}", outpost_cron::format_utc(at));
    }
    if let Some(types) = instance["waitingFor"].as_array().filter(|t| !t.is_empty()) {
        let types: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
        println!("Waits for:  events of type {}", types.join(", "));
    }
    println!("Params:     {}", instance["paramsJson"].as_str().unwrap_or("(not JSON)"));
    if let Some(output) = instance["outputJson"].as_str() {
        println!("Output:     {output}");
    }
    if let Some(error) = instance["error"].as_object() {
        println!(
            "Error:      {}: {}",
            error["name"].as_str().unwrap_or_default(),
            error["message"].as_str().unwrap_or_default()
        );
    }
    let steps = answer["steps"].as_array().cloned().unwrap_or_default();
    println!("Steps:      {}", steps.len());
    for step in &steps {
        let name = step["name"].as_str().unwrap_or_default();
        let occurrence = step["occurrence"].as_u64().unwrap_or(1);
        let label = if occurrence > 1 { format!("{name} (#{occurrence})") } else { name.to_string() };
        let kind = step["kind"].as_str().unwrap_or_default();
        let state = match step["state"].as_str().unwrap_or_default() {
            "done" => format!("done at {}", time(&step["endMs"])),
            "failed" => format!(
                "failed: {}: {}",
                step["error"]["name"].as_str().unwrap_or(""),
                step["error"]["message"].as_str().unwrap_or("")
            ),
            "retrying" => format!("retrying at {}", time(&step["nextAtMs"])),
            "sleeping" => format!("sleeping until {}", time(&step["untilMs"])),
            "waiting" => format!(
                "waiting for {:?} until {}",
                step["eventType"].as_str().unwrap_or(""),
                time(&step["deadlineMs"])
            ),
            "timedOut" => "timed out".to_string(),
            other => other.to_string(),
        };
        println!("  - {label} [{kind}] started {}: {state}", time(&step["startedMs"]));
        if let Some(json) = step["json"].as_str() {
            println!("      result: {json}");
        }
        for (n, attempt) in step["attempts"].as_array().into_iter().flatten().enumerate() {
            let took = attempt["endMs"].as_u64().unwrap_or(0).saturating_sub(attempt["startMs"].as_u64().unwrap_or(0));
            let outcome = match attempt["error"].as_object() {
                Some(error) => {
                    format!("{}: {}", error["name"].as_str().unwrap_or(""), error["message"].as_str().unwrap_or(""))
                }
                None => "ok".to_string(),
            };
            println!("      attempt {} at {} ({took} ms): {outcome}", n + 1, time(&attempt["startMs"]));
        }
    }
    let events = answer["pendingEvents"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        println!("Events not yet taken: {}", events.len());
        for event in events {
            println!(
                "  - {} sent {}: {}",
                event["type"].as_str().unwrap_or(""),
                time(&event["timestampMs"]),
                event["json"].as_str().unwrap_or("(not JSON)")
            );
        }
    }
}
