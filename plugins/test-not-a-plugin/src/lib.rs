//! A valid component that implements some other world: loading it as a
//! jetplug plugin must fail with a clear "does not implement" error.

wit_bindgen::generate!({
    inline: "
        package test:other;
        world other { export run: func() -> u32; }
    ",
});

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        42
    }
}

export!(Other);
