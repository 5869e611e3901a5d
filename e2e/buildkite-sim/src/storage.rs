//! The artifact storage host (a stand-in for S3 behind Buildkite's artifact downloads).
//!
//! URLs are signed and expire (`?Expires=<unix>&Signature=<hex HMAC>`). Like S3, a request
//! carrying an `Authorization` header is refused with `400 InvalidArgument` ("Only one auth
//! mechanism allowed") — a client that forwards its Buildkite token on the redirect fails
//! here instead of leaking it. Errors are S3-style XML.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::api::{ApiPath, endpoint_key, injected_error, query_get, query_pairs};
use crate::faults::FaultAction;
use crate::http::{DropConnection, drop_connection};
use crate::sim::Sim;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/artifacts/{id}/{filename}", get(download))
        .fallback(fallback)
        .layer(from_fn_with_state(Arc::clone(&sim), storage_layer))
        .with_state(sim)
}

fn mac(sim: &Sim, id: Uuid, expires: i64) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(&sim.storage_key) {
        Ok(mut m) => {
            m.update(format!("{id}\n{expires}").as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// A storage URL for an artifact, valid for the configured TTL.
pub fn signed_url(sim: &Sim, id: Uuid, filename: &str) -> String {
    let expires = jiff::Timestamp::now().as_second() + i64::try_from(sim.artifact_ttl()).unwrap_or(60);
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let name = percent_encoding::utf8_percent_encode(filename, SET);
    format!(
        "{}/artifacts/{id}/{name}?Expires={expires}&Signature={}",
        sim.urls.storage_root,
        hex::encode(mac(sim, id, expires))
    )
}

fn s3_error(status: StatusCode, code: &str, message: &str, extra: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>{extra}<RequestId>{}</RequestId><HostId>buildkite-sim</HostId></Error>",
        Uuid::new_v4().simple()
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn storage_layer(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let key = endpoint_key(&req);
    let d = sim.faults.decide(&format!("storage {key}"), true);
    if !d.delay.is_zero() {
        tokio::time::sleep(d.delay).await;
    }
    let resp = match d.action {
        FaultAction::Pass => next.run(req).await,
        FaultAction::Drop => drop_connection(),
        FaultAction::Error(s) => injected_error(s),
    };
    let status = if resp.extensions().get::<DropConnection>().is_some() {
        crate::counters::DROPPED
    } else {
        resp.status().as_u16()
    };
    sim.storage_counters.record(&key, status);
    resp
}

async fn fallback() -> Response {
    s3_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.", "")
}

async fn download(
    State(sim): State<Arc<Sim>>,
    ApiPath((id, _filename)): ApiPath<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let value = xml_escape(&String::from_utf8_lossy(auth.as_bytes()));
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
            &format!("<ArgumentName>Authorization</ArgumentName><ArgumentValue>{value}</ArgumentValue>"),
        );
    }
    let pairs = query_pairs(&uri);
    let (Some(expires), Some(signature)) = (
        query_get(&pairs, "Expires").and_then(|v| v.parse::<i64>().ok()),
        query_get(&pairs, "Signature").and_then(|v| hex::decode(v).ok()),
    ) else {
        return s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Query-string authentication requires the Signature and Expires parameters",
            "",
        );
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return fallback().await;
    };
    let expected = mac(&sim, id, expires);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &signature[..])) {
        return s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            "",
        );
    }
    let now = jiff::Timestamp::now().as_second();
    if now > expires {
        return s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request has expired",
            &format!("<Expires>{expires}</Expires><ServerTime>{now}</ServerTime>"),
        );
    }
    let art = {
        let inner = sim.lock();
        inner
            .artifacts
            .get(&id)
            // Only an upload that finished is in the bucket (`new`: not yet, `error`: never,
            // `expired`/`deleted`: removed).
            .filter(|a| a.state == "finished")
            .map(|a| (a.content.clone(), a.mime_type.clone(), a.sha1sum.clone()))
    };
    match art {
        Some((content, mime, sha1)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, mime), (header::ETAG, format!("\"{sha1}\""))], content)
                .into_response()
        }
        None => fallback().await,
    }
}
