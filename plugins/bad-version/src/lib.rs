//! Test fixture: a scenario built against a future `drhost:plugin@0.3.0`
//! that this host does not support. Loading it must fail with a message
//! naming both versions.

wit_bindgen::generate!({
    inline: r#"
        package drhost:plugin@0.3.0;
        interface plugin {
            info: func() -> string;
            run-step: func(id: string) -> string;
        }
        world scenario { export plugin; }
    "#,
});

struct Future;

impl exports::drhost::plugin::plugin::Guest for Future {
    fn info() -> String {
        "from the future".into()
    }
    fn run_step(id: String) -> String {
        id
    }
}

export!(Future);
