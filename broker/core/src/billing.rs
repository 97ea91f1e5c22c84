//! Billing: every attempt's usage is priced as it is recorded (the model's
//! `price:` at that moment) and kept once per job and attempt; a report
//! charges only the attempt whose result was delivered.

use switchyard_runtime::Registry;
use switchyard_schemas::UsageEvent;
use switchyard_store::ledger::Charge;

/// Prices one attempt's usage by its model's price.
pub fn charge(registry: &Registry, usage: UsageEvent, cache_hit: bool) -> Charge {
    let cost_micros = registry
        .get(&usage.model)
        .and_then(|m| m.price)
        .map_or(0, |p| {
            p.cost_micros(
                usage.usage.prompt_tokens,
                usage.usage.completion_tokens,
                usage.engine_ms,
                cache_hit,
            )
        });
    Charge {
        usage,
        cost_micros,
        cache_hit,
    }
}
