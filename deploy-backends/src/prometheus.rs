//! [`PrometheusMetrics`]: a [`MetricsSource`] over Prometheus's HTTP API.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deploy_core::{BackendError, MetricName, MetricQuery, MetricTarget, MetricsSource, Sample, Series};
use serde::Deserialize;

use crate::http::{HttpTarget, excerpt, read_capped, transport_error};

const BACKEND: &str = "prometheus";
/// Prometheus refuses range queries of more than 11,000 points per series.
const MAX_POINTS: u32 = 10_000;
/// The default cap on one answer's body: 16 MiB (10,000 points of one series take about
/// 300 KiB).
const DEFAULT_MAX_BODY: usize = 16 << 20;
/// The latest sample time accepted, 9999-12-31T23:59:59Z in seconds since the epoch: every
/// time before it is a `SystemTime` on every platform and a `chrono` date.
const MAX_TIMESTAMP_SECS: f64 = 253_402_300_799.0;

/// A PromQL query with placeholders: `$selector` (required) becomes the target's label
/// matchers without braces (`app="shop",pool="canary"` or `app="shop",version="2.0"`), so
/// a template can add its own (`x{$selector,code="500"}`), and `$interval`
/// the range for `rate()` / `increase()` (the query's step, at least the configured minimum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTemplate(String);

impl QueryTemplate {
    /// Checks that `promql` has a `$selector` placeholder.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] when it does not: a query that ignores the target would
    /// count one pool's traffic against another.
    pub fn new(promql: impl Into<String>) -> Result<Self, BackendError> {
        let promql = promql.into();
        if promql.contains("$selector") {
            Ok(Self(promql))
        } else {
            Err(BackendError::Rejected {
                operation: "prometheus query template",
                reason: format!("{promql:?} has no $selector placeholder"),
            })
        }
    }

    fn render(&self, selector: &str, interval: &str) -> String {
        self.0
            .replace("$selector", selector)
            .replace("$interval", interval)
    }
}

/// Reads metrics from Prometheus: one range query per [`MetricQuery`], over the query's
/// window, one point per step (the configured default step when the query sets none).
///
/// Each metric name maps to a [`QueryTemplate`] that must return one series (aggregate with
/// `sum`). Targets select on the labels `app` and `pool` or `version`, which
/// [`ProcessSpec::prometheus_targets`](crate::ProcessSpec::prometheus_targets) puts on every
/// instance it runs. Points that are NaN or infinite (a rate over no traffic) are left out,
/// so a target without traffic has no data.
///
/// Answers are checked, never trusted (security review M6 and m4): a sample whose timestamp
/// is not a time from 1970 to 9999 (negative, NaN, `1e19`, ...) or whose value is not a
/// number makes the whole answer an error ([`BackendError::Unavailable`], "invalid
/// response", naming the field, as `result[0].values[3]`), rather than being dropped, since
/// such an answer did not come from a working Prometheus. A body larger than
/// [`max_body_bytes`](Self::max_body_bytes) (default 16 MiB) is the same error, read no
/// further. Redirects are not followed: a 3xx is an invalid response.
///
/// ```
/// # use deploy_backends::{PrometheusMetrics, QueryTemplate};
/// # use deploy_core::MetricName;
/// let metrics = PrometheusMetrics::new("http://127.0.0.1:9090")?
///     .for_demo_service()
///     .template(
///         MetricName::new("saturation")?,
///         QueryTemplate::new("max(process_open_fds{$selector})")?,
///     );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    target: HttpTarget,
    templates: HashMap<MetricName, QueryTemplate>,
    default_step: Duration,
    min_interval: Duration,
    max_body: usize,
}

impl PrometheusMetrics {
    /// A source over the Prometheus at `base_url` (`http://host:port`), with no templates
    /// yet, a 5 s default step, a 2 s minimum rate interval and a 5 s timeout.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] when `base_url` is not an http(s) URL.
    pub fn new(base_url: impl Into<String>) -> Result<Self, BackendError> {
        let base = base_url.into().trim_end_matches('/').to_owned();
        Ok(Self {
            target: HttpTarget::new("prometheus", base, Duration::from_secs(5))?,
            templates: HashMap::new(),
            default_step: Duration::from_secs(5),
            min_interval: Duration::from_secs(2),
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// Uses `template` for `metric`.
    #[must_use]
    pub fn template(mut self, metric: MetricName, template: QueryTemplate) -> Self {
        self.templates.insert(metric, template);
        self
    }

    /// The four well-known metrics over the demo service's `demo_requests_total{code}` and
    /// `demo_request_duration_seconds` histogram (the usual shape of HTTP server metrics).
    #[must_use]
    pub fn for_demo_service(self) -> Self {
        let templates = [
            (
                MetricName::requests(),
                "sum(increase(demo_requests_total{$selector}[$interval]))",
            ),
            (
                MetricName::error_rate(),
                "(sum(rate(demo_requests_total{$selector,code=~\"5..\"}[$interval])) or vector(0)) / sum(rate(demo_requests_total{$selector}[$interval]))",
            ),
            (
                MetricName::latency_p50_ms(),
                "1000 * histogram_quantile(0.5, sum by (le) (rate(demo_request_duration_seconds_bucket{$selector}[$interval])))",
            ),
            (
                MetricName::latency_p99_ms(),
                "1000 * histogram_quantile(0.99, sum by (le) (rate(demo_request_duration_seconds_bucket{$selector}[$interval])))",
            ),
        ];
        templates.into_iter().fold(self, |source, (metric, promql)| {
            source.template(metric, QueryTemplate(promql.to_owned()))
        })
    }

    /// One point per `step` when a query sets none (default 5 s).
    #[must_use]
    pub fn default_step(mut self, step: Duration) -> Self {
        self.default_step = step.max(Duration::from_millis(1));
        self
    }

    /// The shortest `$interval` (default 2 s; keep it at least twice the scrape interval).
    #[must_use]
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The largest answer body read, in bytes (default 16 MiB); a larger answer is an
    /// error ([`BackendError::Unavailable`]) and the rest of it is not read.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    crate::http::http_target_options!("5 s", "a Prometheus");

    /// Runs an instant query and returns each series' labels and value.
    ///
    /// # Errors
    /// As [`MetricsSource::query`].
    pub async fn instant(&self, promql: &str) -> Result<Vec<(Labels, Sample)>, BackendError> {
        let data = self.get("/api/v1/query", &[("query", promql.to_owned())]).await?;
        instant_points(data)
    }

    /// Runs a range query and returns each series' labels and points.
    ///
    /// # Errors
    /// As [`MetricsSource::query`].
    pub async fn range(
        &self,
        promql: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<Vec<(Labels, Vec<Sample>)>, BackendError> {
        let params = [
            ("query", promql.to_owned()),
            ("start", format_time(start)),
            ("end", format_time(end)),
            ("step", format!("{:.3}", step.as_secs_f64())),
        ];
        range_points(self.get("/api/v1/query_range", &params).await?)
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<QueryData, BackendError> {
        let failed = |err| transport_error(BACKEND, "prometheus query", self.target.timeout, err);
        let response = self
            .target
            .request(reqwest::Method::GET, path)
            .query(params)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let body = read_capped(response, self.max_body).await.map_err(failed)?;
        if body.truncated {
            return Err(invalid(&format!(
                "HTTP {status}, body larger than {} bytes (max_body_bytes)",
                self.max_body
            )));
        }
        parse_answer(status, &body.text)
    }
}

/// Sorts a Prometheus answer: its data on success, else a typed error.
fn parse_answer(status: reqwest::StatusCode, body: &str) -> Result<QueryData, BackendError> {
    let parsed: Result<ApiResponse, _> = serde_json::from_str(body);
    match parsed {
        Ok(ApiResponse {
            status: ref s,
            data: Some(data),
            ..
        }) if s == "success" && status.is_success() => Ok(data),
        Ok(ApiResponse {
            error_type, error, ..
        }) if status.is_client_error() => Err(BackendError::Rejected {
            operation: "prometheus query",
            reason: format!(
                "{}: {}",
                error_type.unwrap_or_else(|| status.to_string()),
                error.unwrap_or_default()
            ),
        }),
        Ok(ApiResponse { error, .. }) => Err(BackendError::Unavailable {
            backend: BACKEND.to_owned(),
            message: format!("HTTP {status}: {}", error.unwrap_or_default()),
            source: None,
            retry_after: None,
        }),
        Err(_) if status.is_server_error() => Err(BackendError::Unavailable {
            backend: BACKEND.to_owned(),
            message: format!("HTTP {status}: {}", excerpt(body)),
            source: None,
            retry_after: None,
        }),
        Err(err) => Err(invalid(&format!(
            "HTTP {status}, not Prometheus JSON ({err}): {}",
            excerpt(body)
        ))),
    }
}

/// A series' labels.
type Labels = BTreeMap<String, String>;

/// The points of an instant query's answer.
fn instant_points(data: QueryData) -> Result<Vec<(Labels, Sample)>, BackendError> {
    match data {
        QueryData::Vector(series) => {
            let mut points = Vec::with_capacity(series.len());
            for (index, s) in series.into_iter().enumerate() {
                if let Some(sample) = point(&s.value, || format!("result[{index}].value"))? {
                    points.push((s.metric, sample));
                }
            }
            Ok(points)
        }
        QueryData::Scalar(value) => Ok(point(&value, || "result".to_owned())?
            .map(|p| (BTreeMap::new(), p))
            .into_iter()
            .collect()),
        QueryData::Matrix(_) | QueryData::String(_) => Err(invalid("an instant query returned a matrix")),
    }
}

/// The points of a range query's answer.
fn range_points(data: QueryData) -> Result<Vec<(Labels, Vec<Sample>)>, BackendError> {
    let QueryData::Matrix(series) = data else {
        return Err(invalid("a range query did not return a matrix"));
    };
    let mut all = Vec::with_capacity(series.len());
    for (index, s) in series.into_iter().enumerate() {
        let mut samples = Vec::with_capacity(s.values.len());
        for (at, value) in s.values.iter().enumerate() {
            if let Some(sample) = point(value, || format!("result[{index}].values[{at}]"))? {
                samples.push(sample);
            }
        }
        all.push((s.metric, samples));
    }
    Ok(all)
}

fn invalid(what: &str) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND.to_owned(),
        message: format!("invalid response: {what}"),
        source: None,
        retry_after: None,
    }
}

fn selector(target: &MetricTarget) -> String {
    let quoted = |value: &str| value.replace('\\', "\\\\").replace('"', "\\\"");
    match target {
        MetricTarget::Pool { app, pool } => format!(
            "app=\"{}\",pool=\"{}\"",
            quoted(app.as_str()),
            quoted(pool.as_str())
        ),
        MetricTarget::Version { app, version } => {
            format!(
                "app=\"{}\",version=\"{}\"",
                quoted(app.as_str()),
                quoted(version.as_str())
            )
        }
    }
}

/// A Prometheus duration ("1500ms").
fn prometheus_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

fn format_time(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{:.3}", since.as_secs_f64())
}

/// One `[timestamp, "value"]` pair, `field` naming it for an error: `None` for a NaN or
/// infinite value (no data), an error for a timestamp that is not a time from 1970 to 9999
/// or a value that is not a number. Checked conversions only (security review M6).
fn point(value: &(f64, String), field: impl Fn() -> String) -> Result<Option<Sample>, BackendError> {
    let (timestamp, text) = value;
    let at = sample_time(*timestamp).ok_or_else(|| {
        invalid(&format!(
            "sample timestamp {timestamp} at {} is not a time from 1970 to 9999",
            field()
        ))
    })?;
    let parsed: f64 = text.trim().parse().map_err(|_| {
        invalid(&format!(
            "sample value {:?} at {} is not a number",
            excerpt(text),
            field()
        ))
    })?;
    Ok(parsed.is_finite().then_some(Sample { at, value: parsed }))
}

/// `seconds` since the epoch as a time, when it is one from 1970 to 9999.
fn sample_time(seconds: f64) -> Option<SystemTime> {
    // `contains` is false for NaN.
    if !(0.0..=MAX_TIMESTAMP_SECS).contains(&seconds) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(seconds).ok()?)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: String,
    data: Option<QueryData>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Matrix(Vec<RangeSeries>),
    Vector(Vec<InstantSeries>),
    Scalar((f64, String)),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct RangeSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

#[derive(Deserialize)]
struct InstantSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[async_trait]
impl MetricsSource for PrometheusMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        let template = self
            .templates
            .get(query.metric())
            .ok_or_else(|| BackendError::NotFound {
                kind: "metric",
                name: query.metric().to_string(),
            })?;
        let window = query.window();
        let points_floor = window / MAX_POINTS;
        let step = query.step().unwrap_or(self.default_step).max(points_floor);
        let interval = prometheus_duration(step.max(self.min_interval));
        let promql = template.render(&selector(query.target()), &interval);
        let end = SystemTime::now();
        let start = end.checked_sub(window).ok_or_else(|| BackendError::Rejected {
            operation: "prometheus query",
            reason: format!("window {window:?} reaches back beyond the earliest representable time"),
        })?;
        let series = self.range(&promql, start, end, step).await?;
        match series.len() {
            0 => Ok(Series::empty()),
            1 => {
                let (_, samples) = series.into_iter().next().unwrap_or_default();
                Ok(Series::new(samples)?)
            }
            n => Err(BackendError::Rejected {
                operation: "prometheus query",
                reason: format!(
                    "the template for {} returned {n} series; aggregate it to one (sum)",
                    query.metric()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn templates_need_a_selector_and_render_both_placeholders() {
        assert!(QueryTemplate::new("sum(up)").is_err());
        let template = QueryTemplate::new("sum(rate(x{$selector}[$interval]))").unwrap();
        assert_eq!(
            template.render("app=\"shop\"", "5000ms"),
            "sum(rate(x{app=\"shop\"}[5000ms]))"
        );
    }

    #[test]
    fn responses_parse_and_non_finite_points_are_dropped() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1700000000.5,"0.25"],[1700000005.5,"NaN"],[1700000010.5,"+Inf"]]}]}}"#;
        let parsed: ApiResponse = serde_json::from_str(body).unwrap();
        let Some(QueryData::Matrix(series)) = parsed.data else {
            panic!("a matrix")
        };
        let points: Vec<Sample> = series[0]
            .values
            .iter()
            .filter_map(|value| point(value, String::new).unwrap())
            .collect();
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].value, 0.25);
        for garbage in [
            "<html>",
            "{\"status\":\"success\"}",
            "{\"data\":{\"resultType\":\"matrix\",\"result\":[{\"values\":[[\"x\",1]]}]}}",
        ] {
            let parsed: Result<ApiResponse, _> = serde_json::from_str(garbage);
            assert!(parsed.map(|p| p.data.is_none()).unwrap_or(true), "{garbage}");
        }
    }

    /// A JSON number as Prometheus might send it, or as a hostile answer might.
    fn json_number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>().prop_map(|x| format!("{x:e}")),
            any::<f64>().prop_map(|x| format!("{x}")),
            any::<i64>().prop_map(|x| x.to_string()),
            any::<u64>().prop_map(|x| x.to_string()),
            (0u64..4_000_000_000, 0u32..1000).prop_map(|(s, ms)| format!("{s}.{ms:03}")),
            "-?[0-9]{1,25}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,4})?",
            Just("1e19".to_owned()),
            Just("1e20".to_owned()),
            Just("9223372036854775807".to_owned()),
            Just("253402300800".to_owned()),
            Just("-0".to_owned()),
        ]
    }

    /// A sample value as Prometheus sends it (a string), or anything else.
    fn sample_value() -> impl Strategy<Value = String> {
        prop_oneof![
            json_number().prop_map(|n| format!("{n:?}")),
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
            prop_oneof![Just("NaN"), Just("+Inf"), Just("-Inf"), Just("1e400"), Just("")]
                .prop_map(|s| format!("{s:?}")),
            json_number(),
            Just("null".to_owned()),
        ]
    }

    /// A sample timestamp: a number, or not.
    fn sample_timestamp() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => json_number(),
            1 => json_number().prop_map(|n| format!("{n:?}")),
            1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Security review M6: any timestamps and values, through the whole parse of both
        /// query kinds and into a `Series`, give points or a typed error, never a panic; a
        /// point kept has a finite value and a time from 1970 to 9999.
        #[test]
        fn arbitrary_samples_parse_or_fail_typed_never_panic(
            points in proptest::collection::vec((sample_timestamp(), sample_value()), 0..8),
            status in prop_oneof![Just(200u16), Just(400), Just(503)],
        ) {
            let values = points
                .iter()
                .map(|(at, value)| format!("[{at},{value}]"))
                .collect::<Vec<_>>()
                .join(",");
            let status = reqwest::StatusCode::from_u16(status).unwrap();
            let range = format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[{values}]}}]}}}}"#
            );
            if let Ok(data) = parse_answer(status, &range)
                && let Ok(series) = range_points(data)
            {
                for (_, samples) in series {
                    for sample in &samples {
                        prop_assert!(sample.value.is_finite());
                        let since = sample.at.duration_since(UNIX_EPOCH).unwrap();
                        prop_assert!(since.as_secs_f64() <= MAX_TIMESTAMP_SECS);
                    }
                    let _ = Series::new(samples);
                }
            }
            for (at, value) in &points {
                for body in [
                    format!(
                        r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{at},{value}]}}]}}}}"#
                    ),
                    format!(r#"{{"status":"success","data":{{"resultType":"scalar","result":[{at},{value}]}}}}"#),
                ] {
                    if let Ok(data) = parse_answer(status, &body) {
                        let _ = instant_points(data);
                    }
                }
            }
        }

        /// Every finite `f64` timestamp is checked, not converted blindly.
        #[test]
        fn any_float_timestamp_is_a_time_or_refused(seconds in any::<f64>()) {
            let accepted = point(&(seconds, "1".to_owned()), String::new).is_ok();
            prop_assert_eq!(accepted, (0.0..=MAX_TIMESTAMP_SECS).contains(&seconds));
        }
    }
}
