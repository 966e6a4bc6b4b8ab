//! Host-side bindings for the `drhost:plugin` WIT package.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "drhost:plugin/scenario",
    imports: { default: async | trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

pub use self::drhost::plugin::types::{
    Component, ComponentKind, Error as CapError, Finding, Outcome, Phase, Priority, ScenarioInfo,
    Step,
};

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.2.0";
/// The WIT package name.
pub const WIT_PACKAGE: &str = "drhost:plugin";
