//! The layers, on figment: defaults (the settings structs' own) → TOML file → `MQGATE_*`
//! environment → flags, later layers winning. Every value keeps the layer it came from, so an
//! error names the key and its origin: the file's path, the variable, the flag.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::settings::Settings;
use super::{Config, ConfigError};

/// Layers of raw values; later layers win.
#[derive(Clone, Default)]
pub struct Layers {
    figment: Figment,
}

/// One layer: flat `key → value` pairs and where they came from.
struct Layer {
    metadata: Metadata,
    values: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

impl Layers {
    /// Starts from the built-in defaults (the settings structs' `Default`s).
    pub fn defaults() -> Self {
        Layers::default()
    }

    /// Sets `key` from `origin` (a flag, a test), refusing unknown keys.
    pub fn set(&mut self, key: &str, value: String, origin: &str) -> Result<(), ConfigError> {
        known(key, origin)?;
        let name = origin.to_string();
        let metadata = Metadata::named(name.clone()).interpolater(move |_, _| name.clone());
        let values = Dict::from([(key.to_string(), Value::from(value))]);
        self.merge(Layer { metadata, values });
        Ok(())
    }

    /// Overlays a TOML file of top-level `key = value` pairs.
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::File {
            path: path.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str::<toml::Table>(&text).map_err(|e| err(syntax_error(&text, &e)))?;
        let mut data = Toml::string(&text).data().map_err(|e| err(e.to_string()))?;
        let values = data.remove(&Profile::Default).unwrap_or_default();
        let origin = path.display().to_string();
        for key in values.keys() {
            known(key, &origin)?;
        }
        let metadata = Toml::file_exact(path).metadata();
        self.merge(Layer { metadata, values });
        Ok(self)
    }

    /// Overlays `MQGATE_<KEY>` variables (`MQGATE_CONFIG` names the file and is skipped here).
    pub fn env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut values, mut names) = (Dict::new(), BTreeMap::new());
        for (var, value) in vars {
            let Some(key) = var.strip_prefix("MQGATE_") else {
                continue;
            };
            if key == "CONFIG" {
                continue;
            }
            let key = key.to_ascii_lowercase();
            known(&key, &var)?;
            values.insert(key.clone(), Value::from(value));
            names.insert(key, var);
        }
        let names = Arc::new(names);
        let metadata = Metadata::named("environment").interpolater(move |_, keys: &[&str]| {
            let key = keys.join(".");
            names.get(&key).cloned().unwrap_or(key)
        });
        self.merge(Layer { metadata, values });
        Ok(self)
    }

    /// Reads the settings and validates them into a [`Config`].
    pub fn build(&self) -> Result<Config, ConfigError> {
        Settings::extract(&self.figment)?.try_into()
    }

    /// The stacked layers.
    #[cfg(test)]
    pub(super) fn figment(&self) -> &Figment {
        &self.figment
    }

    fn merge(&mut self, layer: Layer) {
        self.figment = std::mem::take(&mut self.figment).merge(layer);
    }
}

/// Values are left out: they may be secrets.
impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layers: Vec<&str> = self.figment.metadata().map(|m| &*m.name).collect();
        f.debug_struct("Layers").field("layers", &layers).finish()
    }
}

/// Where and what, without toml's quote of the line (it may hold a secret).
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map_or(1, |before| before.matches('\n').count() + 1);
    format!("not TOML (line {line}): {}", e.message().trim())
}

/// Refuses a key no settings struct has.
fn known(key: &str, origin: &str) -> Result<(), ConfigError> {
    if Settings::keys().contains(&key) {
        Ok(())
    } else {
        Err(ConfigError::UnknownKey {
            key: key.into(),
            origin: origin.into(),
        })
    }
}

/// A figment error as ours: the key, the layer its value came from, and what is wrong.
pub(super) fn invalid(e: figment::Error) -> ConfigError {
    let origin = match &e.metadata {
        Some(m) => match &m.source {
            Some(Source::File(path)) => path.display().to_string(),
            _ => m.interpolate(&Profile::Default, &e.path),
        },
        None => "defaults".into(),
    };
    ConfigError::Invalid {
        key: e.path.join("."),
        origin,
        reason: reason(&e.kind),
    }
}

/// What is wrong, without the value serde's messages would otherwise quote.
fn reason(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::Message(m) => m.clone(),
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
            format!("must be {expected}")
        }
        Kind::MissingField(_) | Kind::DuplicateField(_) | Kind::UnknownField(..) => {
            kind.to_string()
        }
        _ => "not a usable value".into(),
    }
}
