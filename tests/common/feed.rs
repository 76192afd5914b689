//! A feed as the agent meets one: files served by a real nginx (in a test's namespace if
//! given) and a catalogue listing them, under one temporary root that the test's agents use
//! too. The shape every integration test that installs something starts from.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Agent, Nginx, TempDir, TestNetns, feature, sha256_file, write_catalogue};

pub struct Feed {
    pub root: TempDir,
    /// What nginx serves.
    pub www: PathBuf,
    pub nginx: Nginx,
    /// `root/catalogue.json` once `catalogue` has written it.
    pub catalogue: PathBuf,
}

impl Feed {
    /// nginx serving copies of `files` (name in the feed, file to copy), inside `ns` if given.
    pub fn serve(tag: &str, ns: Option<&TestNetns>, files: &[(&str, &str)]) -> Feed {
        let root = TempDir::new(tag);
        let www = root.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        for (name, from) in files {
            std::fs::copy(from, www.join(name)).unwrap();
        }
        let nginx = Nginx::start_in(&www, "", ns);
        let catalogue = root.path().join("catalogue.json");
        Feed {
            root,
            www,
            nginx,
            catalogue,
        }
    }

    /// The feed most tests need: feature `tool`, whose binary is `/usr/bin/true`.
    pub fn tool(tag: &str, ns: Option<&TestNetns>) -> Feed {
        let feed = Feed::serve(tag, ns, &[("tool", "/usr/bin/true")]);
        let tool = feature("tool", "tool", feed.asset("tool"));
        feed.with_catalogue(&[tool])
    }

    /// Writes the catalogue of `features`.
    pub fn with_catalogue(mut self, features: &[Value]) -> Feed {
        self.catalogue = write_catalogue(self.root.path(), features);
        self
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn url(&self, name: &str) -> String {
        self.nginx.url(name)
    }

    pub fn sha256(&self, name: &str) -> String {
        sha256_file(&self.www.join(name))
    }

    /// A catalogue asset for a served file: its URL and digest.
    pub fn asset(&self, name: &str) -> Value {
        json!({ "url": self.url(name), "sha256": self.sha256(name) })
    }

    /// An agent on this feed with its data in `root/dir`, `toml` as its config file, in
    /// `ns` if given, with `failpoints` (`NNC_FAILPOINTS`; empty: none).
    pub fn agent(&self, dir: &str, toml: &str, ns: Option<&TestNetns>, failpoints: &str) -> Agent {
        let env: Vec<(&str, &str)> = if failpoints.is_empty() {
            vec![]
        } else {
            vec![("NNC_FAILPOINTS", failpoints)]
        };
        Agent::start_in(&self.root.path().join(dir), &self.catalogue, toml, ns, &env)
    }
}
