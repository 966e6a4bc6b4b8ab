//! Test fixture: a valid component of some other world that does not
//! export the drhost scenario interface.

wit_bindgen::generate!({
    inline: r#"
        package acme:thing@1.0.0;
        interface greet { hello: func() -> string; }
        world thing { export greet; }
    "#,
});

struct Thing;

impl exports::acme::thing::greet::Guest for Thing {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Thing);
