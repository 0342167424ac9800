//! Catalogs: named lists of patterns that conditions refer to as `@name` — sensitive APIs per
//! cloud, hacker-tool user agents, admin policies. Files under `rules/catalogs/*.yaml`, each a
//! map from catalog name to a list of case-insensitive globs.

use std::collections::BTreeMap;

/// The most patterns one catalog may expand to.
pub const MAX_EXPANDED: usize = 100_000;

#[derive(Debug, Clone, Default)]
pub struct Catalogs {
    lists: BTreeMap<String, Vec<String>>,
}

impl Catalogs {
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.lists.get(name).map(Vec::as_slice)
    }

    /// The catalog's patterns with `@other` entries expanded (recursively; a cycle is an error).
    /// Each catalog is expanded once per expansion (a catalog named twice adds nothing new to a
    /// glob set), and an expansion past `MAX_EXPANDED` patterns is an error: a 1 KB file of
    /// catalogs that each name the next twice must not expand to 2^24 strings.
    pub fn expand(&self, name: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut done = std::collections::HashSet::new();
        self.expand_into(name, &mut Vec::new(), &mut done, &mut out)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut std::collections::HashSet<String>,
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
        if !done.insert(name.to_owned()) {
            return Ok(());
        }
        stack.push(name.to_owned());
        for entry in list {
            match entry.strip_prefix('@') {
                Some(inner) => self.expand_into(inner, stack, done, out)?,
                None => {
                    if out.len() >= MAX_EXPANDED {
                        return Err(format!(
                            "catalog @{} expands to more than {MAX_EXPANDED} patterns",
                            stack[0]
                        ));
                    }
                    out.push(entry.clone());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expansion_bomb_expands_each_catalog_once() {
        // c0 names c1 twice, c1 names c2 twice, ...: 2^24 strings if expanded naively.
        let mut text = String::new();
        for i in 0..24 {
            text.push_str(&format!(
                "c{i}: [\"@c{}\", \"@c{}\", \"p{i}\"]\n",
                i + 1,
                i + 1
            ));
        }
        text.push_str("c24: [\"x\"]\n");
        let mut c = Catalogs::default();
        c.add_file("bomb.yaml", &text).unwrap();
        let started = std::time::Instant::now();
        let all = c.expand("c0").unwrap();
        assert_eq!(all.len(), 25);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn too_many_patterns_is_an_error() {
        let list: Vec<String> = (0..=MAX_EXPANDED).map(|i| format!("\"p{i}\"")).collect();
        let mut c = Catalogs::default();
        c.add_file("big.yaml", &format!("big: [{}]\n", list.join(", ")))
            .unwrap();
        let e = c.expand("big").unwrap_err();
        assert!(e.contains("more than 100000 patterns"), "{e}");
    }
}
