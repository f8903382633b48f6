//! A targeted rollout with live counts: staff always get the new checkout, everyone else on
//! app version 3 or later is ramped 10% -> 25% -> 50% -> 100%, sticky per user, while
//! simulated traffic shows who got what (users let in at one step stay in at the next);
//! then the kill switch, the live counts, the audit trail and the stale-flag report.
//!
//! ```text
//! cargo run --example flags
//! ```

use std::sync::Arc;
use std::time::Duration;

use deploykit::core::MemoryStore;
use deploykit::flags::{
    Constraint, Context, FeatureFlagManager, FlagDefinition, FlagKind, Operator, Payload, PercentageRollout,
    Rule, Stickiness, VariantDefinition,
};

const USERS: usize = 20_000;

fn staff() -> Rule {
    Rule {
        name: Some("staff".into()),
        constraints: vec![
            Constraint::list("email", Operator::StrEndsWith, &["@example.com"]).case_insensitive(),
        ],
        ..Rule::default()
    }
}

fn ramp(percentage: u32) -> Rule {
    Rule {
        name: Some(format!("app >= 3, {percentage}%")),
        constraints: vec![Constraint::single("appVersion", Operator::SemverGte, "3.0.0")],
        rollout: Some(PercentageRollout {
            percentage,
            stickiness: Stickiness::on("userId"),
            group_id: Some("checkout".into()),
        }),
        ..Rule::default()
    }
}

fn users() -> Vec<Context> {
    (0..USERS)
        .map(|i| {
            let email = if i % 100 == 0 {
                format!("dev{i}@EXAMPLE.com")
            } else {
                format!("user{i}@mail.test")
            };
            let version = if i % 4 == 0 { "2.9.1" } else { "3.1.0" };
            Context::new()
                .user_id(format!("user-{i}"))
                .property("email", email)
                .property("appVersion", version)
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = FeatureFlagManager::open(Arc::new(MemoryStore::new()), Default::default()).await?;
    let mut theme = FlagDefinition::new("checkout-theme", true);
    theme.kind = FlagKind::String;
    theme.variants = vec![
        VariantDefinition::new("classic", 50).with_payload(Payload::string("#1d4ed8")),
        VariantDefinition::new("sunset", 50).with_payload(Payload::string("#ea580c")),
    ];
    manager
        .create_flag("ana", FlagDefinition::new("new-checkout", false))
        .await?;
    manager.create_flag("ana", theme).await?;
    let users = users();
    let mut previous_on: Vec<bool> = vec![false; USERS];

    manager
        .create_flag("ana", FlagDefinition::new("legacy-banner", true))
        .await?;

    println!(
        "{:<20} {:>8} {:>8} {:>7} {:>16}",
        "step", "served", "on", "share", "still on (sticky)"
    );
    for percentage in [10, 25, 50, 100] {
        let was_on = previous_on.iter().filter(|on| **on).count();
        manager
            .enable_flag("ana", "new-checkout", Some(vec![staff(), ramp(percentage)]))
            .await?;
        let mut on = 0;
        let mut kept = 0;
        for (index, user) in users.iter().enumerate() {
            let enabled = manager.is_enabled("new-checkout", user);
            if enabled {
                on += 1;
                // Themes only matter to users who see the new checkout.
                manager.engine().variant("checkout-theme", user);
            }
            kept += usize::from(previous_on[index] && enabled);
            previous_on[index] = enabled;
        }
        println!(
            "{:<20} {:>8} {:>8} {:>6.1}% {:>16}",
            format!("ramp to {percentage}%"),
            USERS,
            on,
            100.0 * on as f64 / USERS as f64,
            format!("{kept}/{was_on}"),
        );
    }

    manager.disable_flag("ana", "new-checkout").await?;
    let on = users
        .iter()
        .filter(|user| manager.is_enabled("new-checkout", user))
        .count();
    println!(
        "{:<20} {:>8} {:>8} {:>6.1}%",
        "kill switch",
        USERS,
        on,
        100.0 * on as f64 / USERS as f64
    );

    println!("\nlive counts");
    for flag in ["new-checkout", "checkout-theme"] {
        let metrics = manager.get_flag_metrics(flag).expect("loaded");
        println!(
            "  {flag}: {} evaluations, {} on, {} off, variants {:?}",
            metrics.evaluations, metrics.enabled, metrics.disabled, metrics.variants
        );
    }
    println!("\naudit trail of new-checkout");
    for entry in manager.audit_log("new-checkout").await? {
        let rules = entry.after.as_ref().map(|flag| flag.rules.len()).unwrap_or(0);
        let enabled = entry.after.as_ref().is_some_and(|flag| flag.enabled);
        println!(
            "  r{} {:?} by {}: enabled={enabled}, {rules} rule(s)",
            entry.revision, entry.action, entry.actor
        );
    }
    println!("\nstale flags (threshold: 0 days)");
    for stale in manager.stale_flags(Duration::ZERO).await? {
        println!("  {}: {:?}", stale.flag, stale.reason);
    }
    Ok(())
}
