//! Catalogs: named lists of patterns that conditions refer to as `@name` — sensitive APIs per
//! cloud, hacker-tool user agents, admin policies. Files under `rules/catalogs/*.yaml`, each a
//! map from catalog name to a list of case-insensitive globs.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Catalogs {
    lists: BTreeMap<String, Vec<String>>,
}

impl Catalogs {
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.lists.get(name).map(Vec::as_slice)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.lists.keys().map(String::as_str)
    }

    /// Adds the catalogs of one file; a name defined twice is an error.
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), String> {
        let parsed: BTreeMap<String, Vec<String>> =
            serde_saphyr::from_str(text).map_err(|e| format!("{file}: {}", super::first_line(&e.to_string())))?;
        for (name, entries) in parsed {
            if self.lists.contains_key(&name) {
                return Err(format!("{file}: catalog {name:?} is defined twice"));
            }
            if entries.iter().any(|e| e.trim().is_empty()) {
                return Err(format!("{file}: catalog {name:?} has an empty entry"));
            }
            self.lists.insert(name, entries);
        }
        Ok(())
    }
}
