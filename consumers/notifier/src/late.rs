//! The late-upload watch: learns each store's upload days and usual time of day from the file
//! lifecycle (`sku.files.v1`) and, when a store that uploads daily is past that time by more
//! than the grace, puts a `late` event on the same topic, which the notifier's sink then tells
//! the store's routes about like any other outcome.
//!
//! A store uploads daily when it uploaded on at least [`DAILY_DAYS`] of the [`WINDOW_DAYS`] days
//! ending with its last upload. Its usual time is the median time of day (UTC) of the first
//! upload of each of those days. The next upload is expected on the day after the last one at
//! the usual time; each further day without one is late again, for up to [`WINDOW_DAYS`] days.
//!
//! The watch reads the topic from its beginning (no consumer group, nothing committed) and
//! judges nothing before it has read up to the end the topic had when it started. A late event
//! is the same message however often it is made (its id names the store and the day, its time
//! is the moment the store became late), so a restarted watch, or a second replica, repeats
//! neither its id nor its notification's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use skuflow_platform::kafka::{message_headers, KafkaArgs};
use skuflow_platform::metrics::metrics;
use skuflow_platform::shutdown::CancellationToken;
use skuflow_schemas::{FileEvent, FileStatus, FILE_SCHEMA};

use crate::webhook::short_digest;

/// Days, of the window ending with a store's last upload, with an upload for it to count as
/// uploading daily.
pub const DAILY_DAYS: usize = 5;
/// The window's length in days; also how many days in a row a store is reported late.
pub const WINDOW_DAYS: i64 = 7;
/// Upload times kept per store (the first of each day is what counts).
const KEPT: usize = 32;

/// Flags of the late-upload watch.
#[derive(Debug, Clone, Args)]
pub struct LateArgs {
    /// Minutes a store that uploads daily may be past its usual upload time before it is
    /// reported late.
    #[arg(
        long = "late-grace-minutes",
        env = "SKUFLOW_LATE_GRACE_MINUTES",
        default_value_t = 120
    )]
    pub late_grace_minutes: u32,
    /// Seconds between two looks at every store's uploads.
    #[arg(long = "late-check-secs", env = "SKUFLOW_LATE_CHECK_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub late_check_secs: u64,
    /// No late-upload watch (e.g. on all but one notifier replica, or where stores do not
    /// upload daily).
    #[arg(long = "no-late-watch", env = "SKUFLOW_NO_LATE_WATCH")]
    pub no_late_watch: bool,
}

/// A store: its country and id.
type StoreKey = (String, String);

/// What the watch knows of one store.
#[derive(Debug, Default)]
struct Store {
    /// When it uploaded (the objects' modification times), the newest [`KEPT`].
    uploads: BTreeSet<DateTime<Utc>>,
    /// Its newest upload's event: the match fields of its routes, its bucket and key.
    last: Option<FileEvent>,
}

impl Store {
    fn add(&mut self, ev: &FileEvent) {
        let at = ev.last_modified.unwrap_or(ev.at);
        self.uploads.insert(at);
        while self.uploads.len() > KEPT {
            self.uploads.pop_first();
        }
        if self
            .last
            .as_ref()
            .is_none_or(|l| l.last_modified.unwrap_or(l.at) <= at)
        {
            self.last = Some(ev.clone());
        }
    }
}

/// When a daily uploading store's next upload is due, and its usual time; `None` when the
/// store does not upload daily.
pub fn expected_next(uploads: &BTreeSet<DateTime<Utc>>) -> Option<(DateTime<Utc>, NaiveTime)> {
    let last = *uploads.last()?;
    let last_day = last.date_naive();
    let from = last_day - chrono::Days::new(WINDOW_DAYS as u64 - 1);
    let mut first_of_day: BTreeMap<NaiveDate, DateTime<Utc>> = BTreeMap::new();
    for t in uploads.iter().filter(|t| t.date_naive() >= from) {
        first_of_day.entry(t.date_naive()).or_insert(*t);
    }
    if first_of_day.len() < DAILY_DAYS {
        return None;
    }
    let mut secs: Vec<u32> = first_of_day
        .values()
        .map(|t| t.num_seconds_from_midnight())
        .collect();
    secs.sort_unstable();
    let usual = NaiveTime::from_num_seconds_from_midnight_opt(secs[secs.len() / 2], 0)?;
    let next = (last_day + chrono::Days::new(1)).and_time(usual).and_utc();
    Some((next, usual))
}

/// The due time of the latest upload a store has missed by `now`, given the grace; `None`
/// when it is not late, or missed [`WINDOW_DAYS`] in a row (taken as a store that stopped).
pub fn missed(
    uploads: &BTreeSet<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Option<(DateTime<Utc>, NaiveTime)> {
    let (first, usual) = expected_next(uploads)?;
    if first + chrono::Duration::days(WINDOW_DAYS) + grace <= now {
        return None;
    }
    (0..WINDOW_DAYS)
        .map(|k| first + chrono::Duration::days(k))
        .take_while(|due| *due + grace <= now)
        .last()
        .map(|due| (due, usual))
}

/// The late event of a store that missed the upload due at `due`.
pub fn late_event(
    last: &FileEvent,
    last_at: DateTime<Utc>,
    due: DateTime<Utc>,
    usual: NaiveTime,
    grace: chrono::Duration,
) -> FileEvent {
    let country = last.country.clone().unwrap_or_default();
    let store = last.store_id.clone().unwrap_or_default();
    let day = due.date_naive().to_string();
    let id = format!("late-{}", short_digest(&[&country, &store, &day]));
    let mut ev = FileEvent::new(&id, FileStatus::Late, &last.bucket, &last.key);
    ev.country = last.country.clone();
    ev.store_id = last.store_id.clone();
    ev.store_category = last.store_category;
    ev.chain = last.chain.clone();
    ev.business_date = Some(due.date_naive());
    ev.last_modified = Some(last_at);
    ev.reason = Some(format!(
        "no upload since {}; the store uploads daily, usually at {} UTC, and was due by {} \
         ({} minutes of grace)",
        last_at.format("%Y-%m-%d %H:%M UTC"),
        usual.format("%H:%M"),
        due.format("%Y-%m-%d %H:%M UTC"),
        grace.num_minutes()
    ));
    ev.at = due + grace;
    ev
}

/// Runs the watch on `topic` until `shutdown`.
pub async fn watch(
    args: LateArgs,
    kafka: KafkaArgs,
    topic: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = chrono::Duration::minutes(i64::from(args.late_grace_minutes));
    let mut cfg = kafka.consumer_config("skuflow-notifier-late-watch");
    cfg.set("enable.auto.commit", "false");
    let consumer: StreamConsumer = cfg.create().context("creating the late-upload reader")?;
    let producer = kafka.producer()?;
    // The end of every partition now: nothing is judged before the watch has read that far.
    let ends = tokio::task::block_in_place(|| -> anyhow::Result<Vec<i64>> {
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .with_context(|| format!("reading the metadata of {topic}"))?;
        let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
        (0..partitions as i32)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(30))
                    .with_context(|| format!("reading the end of {topic} [{p}]"))?;
                Ok(high)
            })
            .collect()
    })?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..ends.len() as i32 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut read_to: Vec<i64> = vec![0; ends.len()];
    let mut caught_up = ends.iter().all(|e| *e == 0);
    let mut stores: BTreeMap<StoreKey, Store> = BTreeMap::new();
    let mut sent: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.late_check_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%topic, grace_minutes = args.late_grace_minutes, "Late-upload watch reading the upload history.");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "Late-upload watch: reading the file lifecycle failed; going on.");
                        continue;
                    }
                };
                if let Some(r) = read_to.get_mut(m.partition() as usize) {
                    *r = m.offset() + 1;
                }
                let Some(ev) = m.payload().and_then(|p| serde_json::from_slice::<FileEvent>(p).ok()) else {
                    continue;
                };
                match ev.status {
                    FileStatus::Late => {
                        sent.insert(ev.file_id);
                    }
                    FileStatus::Completed | FileStatus::Failed => {
                        if let Some(store) = &ev.store_id {
                            let key = (ev.country.clone().unwrap_or_default(), store.clone());
                            stores.entry(key).or_default().add(&ev);
                        }
                    }
                    FileStatus::Accepted => {}
                }
            }
            _ = tick.tick() => {
                if !caught_up {
                    // Offsets the reader has passed without a message (transaction markers,
                    // compacted records) count as read.
                    if let Ok(pos) = consumer.position() {
                        for e in pos.elements() {
                            if let (Some(r), Offset::Offset(o)) = (read_to.get_mut(e.partition() as usize), e.offset()) {
                                *r = (*r).max(o);
                            }
                        }
                    }
                    caught_up = read_to.iter().zip(&ends).all(|(r, e)| r >= e);
                    if !caught_up {
                        continue;
                    }
                    tracing::info!(stores = stores.len(), "Late-upload watch has read the upload history; watching.");
                }
                check(&stores, &mut sent, grace, &producer, &topic).await;
            }
        }
    }
}

/// One look at every store: the gauge of each daily uploader, a late event for each that
/// missed an upload it was not yet reported late for.
async fn check(
    stores: &BTreeMap<StoreKey, Store>,
    sent: &mut HashSet<String>,
    grace: chrono::Duration,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
) {
    let now = Utc::now();
    let m = metrics();
    for ((country, store_id), s) in stores {
        let (Some(last), Some(last_at)) = (&s.last, s.uploads.last()) else {
            continue;
        };
        if expected_next(&s.uploads).is_none() {
            continue;
        }
        let gauge = m.store_upload_late.with_label_values(&[country, store_id]);
        let Some((due, usual)) = missed(&s.uploads, now, grace) else {
            gauge.set(0);
            continue;
        };
        gauge.set(1);
        let ev = late_event(last, *last_at, due, usual, grace);
        if sent.contains(&ev.file_id) {
            continue;
        }
        let Ok(payload) = serde_json::to_vec(&ev) else {
            continue;
        };
        let record = FutureRecord::to(topic)
            .key(ev.file_id.as_str())
            .payload(&payload)
            .headers(message_headers(FILE_SCHEMA, &ev.file_id, &[]));
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => {
                m.late_uploads.inc();
                tracing::warn!(%country, %store_id, due = %due, file_id = %ev.file_id, "Store is late with its daily upload; late event sent.");
                sent.insert(ev.file_id);
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, %country, %store_id, "Late event not sent; trying again at the next look.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn days(times: &[&str]) -> BTreeSet<DateTime<Utc>> {
        times.iter().map(|t| at(t)).collect()
    }

    #[test]
    fn the_usual_time_is_the_median_first_upload_of_each_day() {
        let u = days(&[
            "2026-11-25T06:10:00Z",
            "2026-11-26T06:00:00Z",
            "2026-11-26T15:00:00Z", // a second upload that day does not count
            "2026-11-27T06:30:00Z",
            "2026-11-28T05:50:00Z",
            "2026-11-29T09:00:00Z",
        ]);
        let (next, usual) = expected_next(&u).unwrap();
        assert_eq!(usual, NaiveTime::from_hms_opt(6, 10, 0).unwrap());
        assert_eq!(next, at("2026-11-30T06:10:00Z"));
    }

    #[test]
    fn fewer_than_five_days_of_seven_is_not_daily() {
        let u = days(&[
            "2026-11-20T06:00:00Z",
            "2026-11-26T06:00:00Z",
            "2026-11-27T06:00:00Z",
            "2026-11-28T06:00:00Z",
            "2026-11-29T06:00:00Z",
        ]);
        assert!(expected_next(&u).is_none());
        assert!(missed(&u, at("2026-12-01T00:00:00Z"), chrono::Duration::hours(1)).is_none());
    }

    #[test]
    fn late_after_the_grace_each_missed_day_and_not_after_an_upload() {
        let mut u = days(&[
            "2026-11-25T06:00:00Z",
            "2026-11-26T06:00:00Z",
            "2026-11-27T06:00:00Z",
            "2026-11-28T06:00:00Z",
            "2026-11-29T06:00:00Z",
        ]);
        let g = chrono::Duration::minutes(120);
        assert!(missed(&u, at("2026-11-30T07:59:00Z"), g).is_none());
        let (due, _) = missed(&u, at("2026-11-30T08:00:00Z"), g).unwrap();
        assert_eq!(due, at("2026-11-30T06:00:00Z"));
        // The next day missed too: late again, for that day.
        let (due, _) = missed(&u, at("2026-12-01T09:00:00Z"), g).unwrap();
        assert_eq!(due, at("2026-12-01T06:00:00Z"));
        // Reported for a week, then taken as a store that stopped.
        let (due, _) = missed(&u, at("2026-12-06T09:00:00Z"), g).unwrap();
        assert_eq!(due, at("2026-12-06T06:00:00Z"));
        assert!(missed(&u, at("2026-12-07T09:00:00Z"), g).is_none());
        u.insert(at("2026-11-30T11:00:00Z"));
        assert!(missed(&u, at("2026-11-30T12:00:00Z"), g).is_none());
    }

    #[test]
    fn a_late_event_is_the_same_whenever_it_is_made() {
        let mut last = FileEvent::new("f", FileStatus::Completed, "skus-de", "incoming/a.csv");
        last.country = Some("DE".into());
        last.store_id = Some("berlin-1".into());
        let g = chrono::Duration::minutes(90);
        let usual = NaiveTime::from_hms_opt(6, 0, 0).unwrap();
        let due = at("2026-11-30T06:00:00Z");
        let a = late_event(&last, at("2026-11-29T06:00:00Z"), due, usual, g);
        let b = late_event(&last, at("2026-11-29T06:00:00Z"), due, usual, g);
        assert_eq!(a, b);
        assert!(a.file_id.starts_with("late-"));
        assert_eq!(a.status, FileStatus::Late);
        assert_eq!(a.at, at("2026-11-30T07:30:00Z"));
        assert_eq!(a.store_id.as_deref(), Some("berlin-1"));
        assert!(a
            .reason
            .as_deref()
            .unwrap()
            .contains("usually at 06:00 UTC"));
        let other_day = late_event(&last, a.at, due + chrono::Duration::days(1), usual, g);
        assert_ne!(other_day.file_id, a.file_id);
    }
}
