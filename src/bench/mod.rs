//! The boot-time harness (`skiff bench`) and the phase marks skiff takes
//! of itself while it runs.

pub mod harness;
pub mod plot;
mod process;
