//! The incident lifecycle: triggered → acknowledged → mitigated → resolved → closed, with
//! reopen; dedup keys so a re-trigger attaches to the open incident; an append-only
//! timeline; roles; escalation policies; post-mortems; MTTA and MTTR. Incidents persist
//! through any core record store.
//!
//! - `model`: the incident, its status machine and the inputs that open and change one;
//! - `manager`: [`IncidentManager`], which keeps incidents in a record store;
//! - `stats`: MTTA and MTTR.

mod manager;
mod model;
mod stats;

pub use manager::{IncidentManager, IncidentOptions};
pub use model::{
    ActionItem, EscalationLevel, EscalationPolicy, EscalationState, Incident, IncidentStatus,
    IncidentTimelineEntry, IncidentUpdate, NewIncident, Postmortem,
};
pub use stats::{ResponseTimes, response_times};
