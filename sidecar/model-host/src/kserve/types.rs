//! The JSON documents of the KServe Open Inference Protocol v2 (REST), as
//! far as this server reads or writes them.
//!
//! Request types borrow from the body: an input's `data` is kept as the raw
//! JSON text ([`RawValue`]) and decoded only once its datatype is known
//! (`kserve::json`), straight into tensor bytes, without building a
//! `serde_json::Value` per element.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `POST .../infer` body (the JSON part, when the binary extension is used).
#[derive(Debug, Deserialize)]
pub struct InferRequest<'a> {
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub parameters: RequestParameters,
    #[serde(borrow)]
    pub inputs: Vec<RequestInput<'a>>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// Request-level parameters this server acts on; others are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct RequestParameters {
    /// Binary tensor extension: return every output as binary data (what
    /// `tritonclient` asks for when it names no outputs).
    #[serde(default)]
    pub binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RequestInput<'a> {
    pub name: String,
    pub shape: Vec<i64>,
    #[serde(borrow)]
    pub datatype: Cow<'a, str>,
    #[serde(default)]
    pub parameters: InputParameters,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct InputParameters {
    /// Binary tensor extension: this input's bytes follow the JSON header.
    #[serde(default)]
    pub binary_data_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: OutputParameters,
}

#[derive(Debug, Default, Deserialize)]
pub struct OutputParameters {
    #[serde(default)]
    pub binary_data: Option<bool>,
    /// The classification extension, which this server does not implement;
    /// read only to refuse it clearly.
    #[serde(default)]
    pub classification: Option<serde::de::IgnoredAny>,
}

/// `GET /v2`.
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

/// `GET /v2/models/{name}[/versions/{version}]`.
#[derive(Debug, Serialize)]
pub struct ModelMetadata<'a> {
    pub name: &'a str,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata<'a>>,
    pub outputs: Vec<TensorMetadata<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TensorMetadata<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [i64],
}

/// `GET /v2/health/*`, `.../ready`.
#[derive(Debug, Serialize)]
pub struct Readiness<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub ready: bool,
}
