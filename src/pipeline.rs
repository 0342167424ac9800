//! The pipeline after decode — enrich → policy → detect → aggregate — and what the credential
//! reports and leak feeds raise on their own: leak alarms and configuration risks. Every driver
//! runs this one: `replay` (file source, stdout sink), the service (`kafka::run`: Kafka source
//! and sinks; with scale-out, one engine per repartition partition), the benches. It does no
//! I/O: it returns its outputs, and the driver hands them to its sink (JSON lines, a Kafka
//! topic), so a feature added here reaches every driver.

use std::collections::{HashMap, HashSet};

use crate::alarm::Alarm;
use crate::engine::Engine;
use crate::enrich::{Enricher, ReportIndex};
use crate::event::Event;
use crate::risk::Risk;

/// What the pipeline hands its sinks (besides the alarms of events, returned by
/// [`Pipeline::event`]).
#[derive(Debug)]
pub enum Output {
    /// An alarm not raised by an event: a leaked key (leak feed, report flag).
    Alarm(Box<Alarm>),
    /// A configuration risk of the reports in use, new or changed.
    Risk(Box<Risk>),
}

/// The identity of a risk: what it is about (a compacted risk topic keeps the last per key).
pub fn risk_key(r: &Risk) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        r.cloud.as_str(),
        r.account_id.as_ref().map_or("-", |a| a.as_str()),
        r.principal,
        r.risk_id,
        r.key_slot.map_or_else(|| "-".to_owned(), |s| s.to_string())
    )
}

pub struct Pipeline {
    pub enricher: Enricher,
    /// Leak alarms already handed out (a new report version raises only the new ones).
    leaks_sent: HashSet<String>,
    /// Risks already handed out, by key, as JSON (an unchanged one is not handed out again).
    risks_sent: HashMap<String, String>,
    /// The inventory's deltas, when one is kept (`replay --store`).
    pub inventory: Option<std::sync::Mutex<crate::inventory::Batch>>,
}

impl Pipeline {
    pub fn new(enricher: Enricher) -> Pipeline {
        Pipeline {
            enricher,
            leaks_sent: HashSet::new(),
            risks_sent: HashMap::new(),
            inventory: None,
        }
    }

    /// What is known before any call: the leaked keys' alarms and the reports' risks.
    pub fn start(&mut self, risks: &[Risk]) -> Vec<Output> {
        let mut out = self.new_leak_alarms();
        out.extend(self.new_risks(risks));
        out
    }

    /// A new version of the credential reports, swapped in between two events: the leak alarms
    /// of keys it newly flags, and its new or changed risks.
    pub fn reports_changed(&mut self, index: ReportIndex, risks: &[Risk]) -> Vec<Output> {
        self.enricher.reports = index;
        self.start(risks)
    }

    /// A new version of the leak feeds (a reload), swapped in between two events: the alarms of
    /// keys it newly names.
    pub fn leaks_changed(&mut self, leaks: crate::enrich::LeakFeed) -> Vec<Output> {
        self.enricher.leaks = leaks;
        self.new_leak_alarms()
    }

    /// One event through `engine`, isolated: a panic anywhere in it is an error (the record
    /// becomes an `internal_error` dead letter) and the event's key loses its state, which the
    /// panic may have left half updated; the engine goes on with every other key.
    pub fn event(&self, engine: &mut Engine, event: &Event) -> Result<Vec<Alarm>, String> {
        match &self.inventory {
            Some(inv) => {
                let mut b = inv
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.event_counted(engine, event, Some(&mut b))
            }
            None => self.event_counted(engine, event, None),
        }
    }

    /// [`Pipeline::event`], counting the event in `inventory` when one is given (the service
    /// keeps a batch per detection partition, and counts only events not counted before).
    pub fn event_counted(
        &self,
        engine: &mut Engine,
        event: &Event,
        inventory: Option<&mut crate::inventory::Batch>,
    ) -> Result<Vec<Alarm>, String> {
        let enricher = &self.enricher;
        crate::isolate::guard(|| {
            crate::isolate::fault_point(&event.event_id);
            let enrichment = enricher.enrich(event);
            if let Some(b) = inventory {
                b.observe(event, &enrichment, engine.policy.is_hidden(event));
            }
            engine.process(event, &enrichment)
        })
        .inspect_err(|_| engine.reset_subject(event))
    }

    /// The cross-key marks of an event another engine owns (see `Engine::apply_marks`).
    pub fn marks(&self, engine: &mut Engine, event: &Event) -> Result<(), String> {
        let enricher = &self.enricher;
        crate::isolate::guard(|| {
            let enrichment = enricher.enrich(event);
            engine.apply_marks(event, &enrichment);
        })
    }

    fn new_leak_alarms(&mut self) -> Vec<Output> {
        crate::replay::leak_alarms(&self.enricher)
            .into_iter()
            .filter(|a| self.leaks_sent.insert(a.alarm_id.clone()))
            .map(|a| Output::Alarm(Box::new(a)))
            .collect()
    }

    fn new_risks(&mut self, risks: &[Risk]) -> Vec<Output> {
        let mut out = Vec::new();
        for r in risks {
            let Ok(json) = serde_json::to_string(r) else {
                continue;
            };
            if self.risks_sent.get(&risk_key(r)) != Some(&json) {
                self.risks_sent.insert(risk_key(r), json);
                out.push(Output::Risk(Box::new(r.clone())));
            }
        }
        out
    }
}
