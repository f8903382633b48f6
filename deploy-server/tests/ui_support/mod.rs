//! What the browser tests share: a headless Chromium through chromedriver ([`Browser`]),
//! a real dashboard server with a deployer on the simulated fleet, flags and incidents
//! ([`UiServer`]), and where screenshots go.
#![allow(unreachable_pub)]

#[path = "../rollouts_common/mod.rs"]
pub mod rollouts_common;

mod browser;
mod screenshots;
mod server;

pub use browser::{Browser, WAIT};
pub use screenshots::save_screenshot;
pub use server::{FIRST_STEP, USAGE_INTERVAL, UiServer};
