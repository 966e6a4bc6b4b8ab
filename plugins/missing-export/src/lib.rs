//! Test fixture: claims drhost:plugin@0.2.0 but its `plugin` interface lacks
//! `info` and has a `run-step` of the wrong shape.

wit_bindgen::generate!({
    inline: r#"
        package drhost:plugin@0.2.0;
        interface plugin {
            run-step: func(id: string) -> string;
        }
        world scenario { export plugin; }
    "#,
});

struct Broken;

impl exports::drhost::plugin::plugin::Guest for Broken {
    fn run_step(id: String) -> String {
        id
    }
}

export!(Broken);
