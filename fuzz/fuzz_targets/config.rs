//! The gateway's TOML config file, through the reader the binary uses.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

// The root package is a binary with no library: compile its config reader here.
#[allow(dead_code, unused_imports)]
#[path = "../../src/config.rs"]
mod config;

use config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, Path::new("/etc/causeway"), &Overrides::default()) {
        Ok(config) => {
            let logged = config.to_toml();
            let again =
                Config::from_toml_str(&logged, Path::new("/etc/causeway"), &Overrides::default())
                    .unwrap_or_else(|e| panic!("the logged config does not load: {e}\n{logged}"));
            assert_eq!(again, config);
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty());
            assert!(errors.errors.iter().all(|e| !e.message.is_empty()));
        }
    }
});
