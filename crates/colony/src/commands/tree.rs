//! `colony tree`: plan a hierarchy and print its tiers.

use crate::{
    Failure,
    output::{Table, thousands},
};
use colony_core::hierarchy::{DEFAULT_SPAN, DEFAULT_TIERS, HierarchyOptions, Plan, Tiers};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Agents in the bottom tier, the ones that run tasks.
    #[arg(long)]
    workers: u64,
    /// The most children one agent supervises.
    #[arg(long, default_value_t = DEFAULT_SPAN)]
    span: u32,
    /// Tier names, top to bottom, separated by commas.
    #[arg(long, value_delimiter = ',', conflicts_with = "depth", default_values_t = DEFAULT_TIERS.map(String::from))]
    tiers: Vec<String>,
    /// `auto`: add tiers above the workers until one root remains.
    #[arg(long, value_parser = ["auto"])]
    depth: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    span: u32,
    total: u64,
    tiers: Vec<TierReport>,
}

#[derive(Debug, Serialize)]
struct TierReport {
    name: String,
    count: u64,
    /// Children per agent of this tier; absent for the worker tier.
    span: Option<colony_core::hierarchy::SpanStats>,
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    let tiers = if args.depth.is_some() {
        Tiers::Auto
    } else {
        Tiers::Named(args.tiers.clone())
    };
    let plan = Plan::new(&HierarchyOptions {
        workers: args.workers,
        span: args.span,
        tiers,
    })
    .map_err(Failure::input)?;
    let report = Report {
        span: plan.span(),
        total: plan.total(),
        tiers: plan
            .tiers()
            .iter()
            .enumerate()
            .map(|(i, t)| TierReport {
                name: t.name.clone(),
                count: t.count,
                span: plan.span_stats(i),
            })
            .collect(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::work)?
        );
        return Ok(());
    }
    let mut table = Table::new(&["tier", "agents", "min span", "avg span", "max span"]);
    for tier in &report.tiers {
        let (min, avg, max) = match tier.span {
            Some(s) => (
                s.min.to_string(),
                format!("{:.2}", s.avg),
                s.max.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        table.row(vec![
            tier.name.clone(),
            thousands(tier.count),
            min,
            avg,
            max,
        ]);
    }
    table.row(vec!["total".into(), thousands(report.total)]);
    print!("{}", table.render());
    Ok(())
}
