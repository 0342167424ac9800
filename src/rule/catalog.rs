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

    /// The catalog's patterns with `@other` entries expanded (recursively; a cycle is an error).
    pub fn expand(&self, name: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        self.expand_into(name, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        if stack.iter().any(|s| s == name) {
            return Err(format!(
                "catalog @{name} includes itself ({} -> {name})",
                stack.join(" -> ")
            ));
        }
        let list = self
            .get(name)
            .ok_or_else(|| format!("unknown catalog @{name}"))?;
        stack.push(name.to_owned());
        for entry in list {
            match entry.strip_prefix('@') {
                Some(inner) => self.expand_into(inner, stack, out)?,
                None => out.push(entry.clone()),
            }
        }
        stack.pop();
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.lists.keys().map(String::as_str)
    }

    /// Adds the catalogs of one file; a name defined twice is an error.
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), String> {
        let parsed: BTreeMap<String, Vec<String>> = serde_saphyr::from_str(text)
            .map_err(|e| format!("{file}: {}", super::first_line(&e.to_string())))?;
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
