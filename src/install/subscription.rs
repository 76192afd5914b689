//! Several servers behind one instance: `settings.outbounds`, or a `settings.subscription`
//! the agent fetches at install and every `subscriptionRefresh` seconds (default a day), and
//! `selectOutbound` pinning one of them. A new list or pin is applied with `updateInstance`'s
//! rules: rendered and checked by the service's own binary first (a fetch, parse or check
//! that fails changes nothing: the service keeps RUNNING, the instance's `error` and a
//! `subscription.failed` event say why), then the service is restarted once on it and must
//! become healthy, else the previous servers are put back and started again. A crash in
//! between is undone at the next start (`recover_reconfiguring`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Installer, RequestError, StepError, blocking, refuse, wrong_state};
use crate::catalogue::Feature;
use crate::code::Code;
use crate::configgen::{self, Generator};
use crate::events::EventKind;
use crate::store::{Fetched, Instance, Servers, Status, Step};

/// The most a subscription's body may be.
const BODY_CAP: u64 = 1 << 20;
/// The most a subscription fetch may take, however slowly its server sends.
const FETCH_DEADLINE: Duration = Duration::from_secs(60);
/// How soon a refresh that failed is tried again.
const RETRY_MS: u64 = 300_000;
/// `subscriptionRefresh` when the settings do not say.
const DEFAULT_REFRESH_SECS: u64 = 86_400;
/// The most `measureOutbounds` waits for the service's measurement.
const MEASURE_SECS: u64 = 10;

/// The settings the generator renders: the user's, with the fetched servers and the pin.
pub(crate) fn render_settings(inst: &Instance) -> Value {
    let mut s = inst.settings.clone();
    if let Some(o) = s.as_object_mut() {
        if let Some(f) = &inst.fetched {
            o.insert(configgen::FETCHED.into(), Value::from(f.servers.clone()));
        }
        if let Some(t) = &inst.selected_outbound {
            o.insert(configgen::SELECTED.into(), Value::from(t.as_str()));
        }
    }
    s
}

/// The servers an instance's config names, as generator and outbound objects.
pub(crate) fn servers(inst: &Instance) -> Vec<Value> {
    match &inst.fetched {
        Some(f) => f.servers.clone(),
        None => inst
            .settings
            .get("outbounds")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    }
}

fn subscription_url(inst: &Instance) -> Option<String> {
    inst.settings
        .get("subscription")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Installer {
    /// GETs (within `FETCH_DEADLINE`, at most `BODY_CAP` bytes) and parses the
    /// subscription on a blocking thread. No message carries the URL (its path or query
    /// often holds the user's token). A body refused before (`rejected`) is refused again
    /// without being applied.
    async fn fetch_subscription(&self, inst: &Instance, g: Generator) -> Result<Fetched, String> {
        let url = subscription_url(inst).unwrap_or_default();
        let plain_ok = inst.settings.get("subscriptionHttp") == Some(&Value::Bool(true));
        if !plain_ok && !url.starts_with("https://") {
            return Err("the subscription is plain http: anyone on the way could choose your servers (use https, or set subscriptionHttp to accept that)".into());
        }
        let rejected = inst.fetched.as_ref().and_then(|f| f.rejected.clone());
        let http = self.config.feed.http.clone();
        blocking(move || {
            let agent = crate::http_client::agent(&http);
            let body = crate::http_client::get_small_within(&agent, &url, BODY_CAP, FETCH_DEADLINE)
                .map_err(|e| {
                    format!(
                        "fetching the subscription: {}",
                        e.to_string().replace(&url, "(its URL)")
                    )
                })?;
            let digest = crate::util::hex(&<sha2::Sha256 as sha2::Digest>::digest(&body));
            if rejected.as_deref() == Some(digest.as_str()) {
                return Err("the subscription still holds the list that was refused before".into());
            }
            let text = String::from_utf8(body)
                .map_err(|_| "the subscription is not UTF-8 text".to_owned())?;
            let (servers, skipped) = g.subscription(&text)?;
            let at = crate::util::now_ms();
            Ok(Fetched {
                servers,
                at,
                skipped,
                attempted: at,
                digest,
                rejected: None,
            })
        })
        .await
    }

    /// CONFIGURING of an instance with a subscription: the first fetch, recorded before its
    /// config is rendered (without it there is nothing to render).
    pub(super) async fn first_fetch(
        &self,
        inst: Instance,
        feature: &Feature,
    ) -> Result<Instance, StepError> {
        let Some(g) = feature.generator() else {
            return Ok(inst);
        };
        if subscription_url(&inst).is_none() || inst.fetched.is_some() {
            return Ok(inst);
        }
        let secrets = feature.secrets(&render_settings(&inst));
        let fetched = self.fetch_subscription(&inst, g).await.map_err(|e| {
            StepError::new(
                Step::Configuring,
                Code::SubscriptionFailed,
                configgen::scrub(&e, &secrets),
            )
        })?;
        log::info!(target: "api", "instance {}: subscription has {} usable server(s), {} skipped", inst.id, fetched.servers.len(), fetched.skipped.len());
        let store = self.store.clone();
        let id = inst.id.clone();
        blocking(move || store.update_instance(&id, |i| i.fetched = Some(fetched)))
            .await
            .map(|(_, after)| after)
            .map_err(|e| StepError::new(Step::Configuring, Code::StateError, e.to_string()))
    }

    /// `refreshSubscription` and the timer: fetch, and apply a list that differs.
    pub(crate) async fn refresh_subscription(&self, id: &str) -> Result<Instance, RequestError> {
        let inst = self.existing(id)?;
        if subscription_url(&inst).is_none() {
            return Err(refuse(
                Code::InvalidState,
                format!("instance {id} has no subscription"),
            ));
        }
        let (feature, g) = self.generator_of(&inst)?;
        let secrets = feature.secrets(&render_settings(&inst));
        let fetched = match self.fetch_subscription(&inst, g).await {
            Ok(f) => f,
            Err(e) => {
                let e = StepError::new(Step::Configuring, Code::SubscriptionFailed, e);
                return Err(self.refresh_failed(id, &e, &secrets, None).await);
            }
        };
        let (servers, skipped) = (fetched.servers.len(), fetched.skipped.len());
        if inst
            .fetched
            .as_ref()
            .is_some_and(|old| old.servers == fetched.servers)
        {
            // The same servers: only the fetch is newer (and an earlier failure is over).
            let store = self.store.clone();
            let key = id.to_owned();
            blocking(move || {
                store.update_instance(&key, |i| {
                    if let Some(old) = &mut i.fetched {
                        let servers = std::mem::take(&mut old.servers);
                        *old = Fetched { servers, ..fetched };
                    }
                    if i.error_code.as_deref() == Some(Code::SubscriptionFailed.as_str()) {
                        i.error = None;
                        i.error_code = None;
                    }
                })
            })
            .await?;
            self.bus.publish(
                Some(id),
                EventKind::SubscriptionRefreshed {
                    servers,
                    skipped,
                    changed: false,
                },
            );
            return self.existing(id);
        }
        let digest = fetched.digest.clone();
        let applied = self
            .reconfigure(id, &feature, "subscription refreshed", move |now| Servers {
                selected: kept_pin(now, &fetched.servers),
                fetched: Some(fetched),
            })
            .await;
        match applied {
            Ok(done) => {
                self.bus.publish(
                    Some(id),
                    EventKind::SubscriptionRefreshed {
                        servers,
                        skipped,
                        changed: true,
                    },
                );
                Ok(done)
            }
            Err(e) => Err(self.refresh_failed(id, &e, &secrets, Some(digest)).await),
        }
    }

    /// A refresh that changed nothing: the instance keeps its status and says why; a list
    /// that was refused (`rejected`: its digest) is not tried again until it changes.
    async fn refresh_failed(
        &self,
        id: &str,
        e: &StepError,
        secrets: &[String],
        rejected: Option<String>,
    ) -> RequestError {
        let message = format!(
            "subscription refresh failed, the servers are unchanged: {}",
            configgen::scrub(&e.message, secrets)
        );
        log::warn!(target: "api", "instance {id}: {message}");
        let (store, key, text, code) = (self.store.clone(), id.to_owned(), message.clone(), e.code);
        let _ = blocking(move || {
            store.update_instance(&key, |i| {
                i.error = Some(text);
                i.error_code = Some(code.to_string());
                if let Some(f) = &mut i.fetched {
                    f.attempted = crate::util::now_ms();
                    if rejected.is_some() {
                        f.rejected = rejected;
                    }
                }
            })
        })
        .await;
        self.bus.publish(
            Some(id),
            EventKind::SubscriptionFailed {
                code: e.code.as_str(),
                error: message.clone(),
            },
        );
        refuse(e.code, message)
    }

    /// `selectOutbound`: pins one of the instance's servers (`auto`: the automatic choice).
    pub(crate) async fn select_outbound(
        &self,
        id: &str,
        tag: &str,
    ) -> Result<Instance, RequestError> {
        let inst = self.existing(id)?;
        let (feature, _) = self.generator_of(&inst)?;
        let tags = configgen::tags(&servers(&inst));
        if tags.is_empty() {
            return Err(refuse(
                Code::InvalidState,
                format!(
                    "instance {id} has no list of servers (settings.outbounds or settings.subscription)"
                ),
            ));
        }
        let selected = if tag == configgen::AUTO {
            None
        } else if tags.iter().any(|t| t == tag) {
            Some(tag.to_owned())
        } else {
            return Err(refuse(
                Code::UnknownOutbound,
                format!(
                    "instance {id} has no server {tag:?} (it has {}, and {})",
                    tags.join(", "),
                    configgen::AUTO
                ),
            ));
        };
        let secrets = feature.secrets(&render_settings(&inst));
        self.reconfigure(id, &feature, "server selected", move |now| Servers {
            fetched: now.fetched.clone(),
            selected,
        })
        .await
        .map_err(|e| refuse(e.code, configgen::scrub(&e.message, &secrets)))
    }

    /// Each server's last measured delay in ms, by tag, from sing-box's Clash API (its
    /// urltest history); empty when the instance has no control API, is not RUNNING, or does
    /// not answer within 2 s. The answer is the service's: read on a blocking thread, capped.
    pub(crate) async fn latencies(&self, inst: &Instance) -> HashMap<String, u64> {
        let Some(v) = self.ask_control(inst, "proxies", 2).await else {
            return HashMap::new();
        };
        let Some(proxies) = v["proxies"].as_object() else {
            return HashMap::new();
        };
        proxies
            .iter()
            .filter_map(|(tag, p)| {
                let delay = p["history"].as_array()?.last()?["delay"].as_u64()?;
                (delay > 0).then(|| (tag.clone(), delay))
            })
            .collect()
    }

    /// `measureOutbounds`: sing-box's urltest measures every server it has no fresh
    /// measurement of now (through each, to the probe URL), rather than at its next round;
    /// `latencyMs` then shows the results and the automatic choice follows them. A server
    /// that failed has none. At most [`MEASURE_SECS`].
    pub(crate) async fn measure_outbounds(&self, id: &str) -> Result<Instance, RequestError> {
        let inst = self.existing(id)?;
        let missing = if servers(&inst).is_empty() {
            Some("has no list of servers (settings.outbounds or settings.subscription)")
        } else if inst.control_secret.is_none() {
            Some("has no control API to measure through (only sing-box measures its servers)")
        } else if inst.status != Status::Running {
            Some("is not RUNNING")
        } else {
            None
        };
        if let Some(why) = missing {
            return Err(refuse(Code::InvalidState, format!("instance {id} {why}")));
        }
        let path = format!(
            "group/{}/delay?timeout={}",
            configgen::AUTO,
            MEASURE_SECS * 1000
        );
        if self
            .ask_control(&inst, &path, MEASURE_SECS + 2)
            .await
            .is_none()
        {
            return Err(refuse(
                Code::ServiceFailed,
                format!("instance {id}'s service did not answer the measurement"),
            ));
        }
        self.existing(id)
    }

    /// GET `path` of the instance's Clash API as JSON: `None` without a control API, unless
    /// RUNNING, or without a 200 within `secs`. Straight to the service, never through a
    /// proxy from the environment (it would see the secret); on a blocking thread, capped.
    async fn ask_control(&self, inst: &Instance, path: &str, secs: u64) -> Option<Value> {
        let (Some(secret), Status::Running) = (inst.control_secret.clone(), inst.status) else {
            return None;
        };
        if servers(inst).is_empty() {
            return None;
        }
        let paths = self.instance_paths(&inst.id);
        let (ctx, _) = self.context(inst, &paths);
        let url = format!("http://{}:{}/{path}", ctx.listen, configgen::CONTROL_PORT);
        blocking(move || {
            let agent: ureq::Agent = crate::http_client::builder()
                .proxy(None)
                .http_status_as_error(false)
                .build()
                .into();
            let resp = agent
                .get(&url)
                .header("authorization", &format!("Bearer {secret}"))
                .config()
                .timeout_global(Some(Duration::from_secs(secs)))
                .build()
                .call()
                .ok()
                .filter(|r| r.status() == 200)?;
            let body =
                crate::http_client::read_capped(resp.into_body().into_reader(), 256 * 1024).ok()?;
            serde_json::from_slice(&body).ok()
        })
        .await
    }

    fn generator_of(&self, inst: &Instance) -> Result<(Feature, Generator), RequestError> {
        let feature = self.feature_for(inst, &inst.version).ok_or_else(|| {
            refuse(
                Code::CatalogueChanged,
                format!(
                    "the definition of {} {} is unknown",
                    inst.feature_id, inst.version
                ),
            )
        })?;
        let g = feature.generator().ok_or_else(|| {
            refuse(
                Code::InvalidState,
                format!("{} has no config generator", inst.feature_id),
            )
        })?;
        Ok((feature, g))
    }

    /// Applies the servers `next` makes of the instance as it is now (read under the gate):
    /// checked first, then one healthy start, else the old ones back.
    async fn reconfigure(
        &self,
        id: &str,
        feature: &Feature,
        reason: &str,
        next: impl FnOnce(&Instance) -> Servers + Send + 'static,
    ) -> Result<Instance, StepError> {
        let _one = self.ops_gate.lock().await;
        let state = |e: RequestError| StepError::new(Step::Updating, e.code, e.message);
        let inst = self.existing(id).map_err(state)?;
        let next = next(&inst);
        let mut candidate = inst.clone();
        candidate.fetched.clone_from(&next.fetched);
        candidate.selected_outbound.clone_from(&next.selected);
        let store = self.store.clone();
        let key = id.to_owned();
        if inst.status != Status::Running {
            if !matches!(
                inst.status,
                Status::Stopped | Status::Installed | Status::Failed
            ) {
                return Err(state(wrong_state(
                    &inst,
                    "; servers change on a RUNNING, STOPPED, INSTALLED or FAILED instance",
                )));
            }
            // Nothing runs: the next start renders and checks the new servers.
            return blocking(move || {
                store.update_instance(&key, |i| {
                    i.fetched = next.fetched;
                    i.selected_outbound = next.selected;
                })
            })
            .await
            .map(|(_, after)| after)
            .map_err(|e| StepError::new(Step::Updating, Code::StateError, e.to_string()));
        }
        self.check_candidate(&candidate, feature).await?;
        // Apply: UPDATING (no stop, update or uninstall meanwhile), the old servers kept.
        let (before, updating) = blocking(move || {
            store.update_instance(&key, |i| {
                i.status = Status::Updating;
                i.reconfiguring = Some(Servers {
                    fetched: i.fetched.take(),
                    selected: i.selected_outbound.take(),
                });
                i.fetched = next.fetched;
                i.selected_outbound = next.selected;
            })
        })
        .await
        .map_err(|e| StepError::new(Step::Updating, Code::StateError, e.to_string()))?;
        self.bus.publish(
            Some(id),
            EventKind::StatusChanged {
                from: before.status,
                to: Status::Updating,
                reason: Some(reason.to_owned()),
            },
        );
        self.supervisor.stop(id).await;
        let started = match crate::failpoint::hit("reconfigure.stopped") {
            Ok(()) => self.launch(&updating, feature, Some(1)).await,
            Err(m) => Err(StepError::new(Step::Updating, Code::Injected, m)),
        };
        match started {
            Ok(()) => self
                .transition(id, Status::Running, Some(reason), |i| {
                    i.reconfiguring = None;
                    i.error = None;
                    i.error_code = None;
                    i.failed_step = None;
                })
                .await
                .ok_or_else(|| StepError::vanished(Step::Updating)),
            Err(e) => {
                self.put_servers_back(&updating, feature, &e).await;
                Err(e)
            }
        }
    }

    /// Renders `candidate` into `config.next.*` and lets the binary check it; the running
    /// service and its config are not touched.
    async fn check_candidate(
        &self,
        candidate: &Instance,
        feature: &Feature,
    ) -> Result<(), StepError> {
        let bad = |m: String| StepError::new(Step::Configuring, Code::ConfigInvalid, m);
        let g = feature
            .generator()
            .ok_or_else(|| bad("no config generator".into()))?;
        let paths = self.instance_paths(&candidate.id);
        let (ctx, _) = self.context(candidate, &paths);
        let text = g
            .render(&ctx, &render_settings(candidate))
            .map_err(bad)?
            .text;
        let next = super::update::staged(&paths.config.join(g.file_name()), "next");
        let uid = candidate
            .uid
            .ok_or_else(|| bad("the instance has no service user".into()))?;
        let file = next.clone();
        blocking(move || super::lifecycle::write_config(&file, &text, uid)).await?;
        let binary = candidate.binary_path.clone().unwrap_or_default().into();
        let checked = self
            .check_config(
                candidate,
                feature,
                binary,
                super::lifecycle::check_args(feature, g, &next),
            )
            .await;
        blocking(move || std::fs::remove_file(next)).await.ok();
        checked
    }

    /// The new servers did not start: the old ones back, started again. `reconfiguring`
    /// stays until the end, so a crash meanwhile is undone at the next start.
    async fn put_servers_back(&self, inst: &Instance, feature: &Feature, e: &StepError) {
        let old = inst.reconfiguring.clone().unwrap_or_default();
        self.supervisor.stop(&inst.id).await;
        self.kill_leftover(inst);
        let Some(back) = self
            .transition(&inst.id, Status::Updating, None, move |i| {
                i.fetched = old.fetched;
                i.selected_outbound = old.selected;
                i.pid = None;
            })
            .await
        else {
            return;
        };
        let mut message = format!(
            "the new servers did not start ({}); the previous ones are back",
            e.message
        );
        let status = match self.launch(&back, feature, None).await {
            Ok(()) => Status::Running,
            Err(again) => {
                message = format!("{message}, and did not start either: {}", again.message);
                Status::Failed
            }
        };
        let (code, text) = (e.code.to_string(), message.clone());
        self.transition(&inst.id, status, Some(&message), move |i| {
            i.reconfiguring = None;
            i.failed_step = (status == Status::Failed).then_some(Step::Updating);
            i.error_code = Some(code);
            i.error = Some(text);
        })
        .await;
    }

    /// Agent start: a reconfiguration a crash interrupted is undone (its servers were not
    /// proven); the next start renders the old ones again.
    pub(crate) fn recover_reconfiguring(&self) -> Result<usize, crate::store::StoreError> {
        let interrupted = self
            .store
            .instances_where(|i| i.status == Status::Updating && i.reconfiguring.is_some())?;
        for inst in &interrupted {
            log::warn!(target: "api", "instance {}: the agent stopped while changing its servers; the previous ones are back", inst.id);
            self.kill_leftover(inst);
            self.store.update_instance(&inst.id, |i| {
                let old = i.reconfiguring.take().unwrap_or_default();
                i.fetched = old.fetched;
                i.selected_outbound = old.selected;
                i.status = Status::Running;
                i.pid = None;
            })?;
        }
        Ok(interrupted.len())
    }

    /// Refreshes each RUNNING instance's subscription when its `subscriptionRefresh` is due,
    /// for as long as the agent runs; each refresh is a task of its own (one slow server
    /// holds up no other), marked attempted first so the next tick does not start it again.
    pub(crate) async fn refresh_subscriptions_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let now = crate::util::now_ms();
            let due = self.store.instances_where(|i| {
                let every = i
                    .settings
                    .get("subscriptionRefresh")
                    .and_then(Value::as_u64)
                    .unwrap_or(DEFAULT_REFRESH_SECS);
                // A failed refresh is tried again after RETRY, not every minute.
                i.status == Status::Running
                    && every > 0
                    && i.fetched.as_ref().is_some_and(|f| {
                        now.saturating_sub(f.at) >= every.saturating_mul(1000)
                            && now.saturating_sub(f.attempted) >= RETRY_MS
                    })
            });
            for inst in due.unwrap_or_default() {
                let store = self.store.clone();
                let key = inst.id.clone();
                let marked = blocking(move || {
                    store.update_instance(&key, |i| {
                        if let Some(f) = &mut i.fetched {
                            f.attempted = now;
                        }
                    })
                })
                .await;
                if marked.is_ok() {
                    let this = Arc::clone(&self);
                    // A failure is recorded on the instance and published: nothing more to do.
                    crate::util::spawn(async move {
                        let _ = this.refresh_subscription(&inst.id).await;
                    });
                }
            }
        }
    }
}

/// The pin survives a new list only where the same server (type, address, port) still has
/// its tag; a tag like `server-2` names a position, not a server.
fn kept_pin(now: &Instance, new: &[Value]) -> Option<String> {
    let pinned = now.selected_outbound.as_deref()?;
    let same = |o: &Value| {
        (
            o["type"].clone(),
            o["server"].clone(),
            o["serverPort"].clone(),
        )
    };
    let old = servers(now);
    let was = configgen::tags(&old)
        .into_iter()
        .zip(&old)
        .find(|(t, _)| t == pinned)?
        .1
        .clone();
    configgen::tags(new)
        .into_iter()
        .zip(new)
        .find(|(t, o)| t == pinned && same(o) == same(&was))
        .map(|(t, _)| t)
}
