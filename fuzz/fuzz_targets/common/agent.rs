//! The agent state the agent fuzz targets serve with: the real CPU plugin
//! behind one executor, limits small enough for a fuzzer.

use skiff::accel::config::AccelFlags;
use skiff::agent::exec::Executor;
use skiff::agent::AgentConfig;
use std::time::Duration;

/// `address` is never bound: a unix one only lets a connection offer
/// skiff's SharedMemory service (with `shared_memory`), so its spans are
/// fuzzed too.
pub fn agent(address: &str, shared_memory: bool) -> (AgentConfig, Executor) {
    let flags = AccelFlags {
        accel: Some("cpu".into()),
        ..Default::default()
    };
    let accel = flags.into_config(None).unwrap();
    let (exec, _) = Executor::start(accel.clone()).unwrap();
    let cfg = AgentConfig {
        address: address.parse().unwrap(),
        accel,
        max_frame: 1 << 20,
        max_connections: 1,
        max_connections_per_peer: 1,
        idle_timeout: Duration::from_secs(60),
        frame_timeout: Duration::from_secs(30),
        shared_memory,
        allow_client_libraries: false,
    };
    (cfg, exec)
}
