//! The REST calls on pipelines: get, create, update, unarchive, and the organization's
//! pipeline settings.

use http::{Method, StatusCode};

use super::super::budget::Priority;
use super::super::client::{Auth, Call, Client, Mode};
use super::super::error::{Error, Result};
use super::super::wire;
use super::{NewPipeline, OrganizationPipelineSettings, Pipeline, PipelinePatch};

/// Longest slug Buildkite accepts.
pub const MAX_SLUG_LEN: usize = 100;

/// Whether `s` is a valid pipeline slug: `[a-zA-Z0-9][a-zA-Z0-9-]*`, at most 100 characters.
pub fn is_valid_slug(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_SLUG_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn check_slug(endpoint: &'static str, slug: &str) -> Result<()> {
    if is_valid_slug(slug) {
        Ok(())
    } else {
        Err(Error::InvalidRequest { endpoint, message: format!("{slug:?} is not a valid pipeline slug") })
    }
}

impl Client {
    /// Decodes a pipeline and remembers its GraphQL id (a GraphQL create names the pipeline
    /// by it).
    fn decode_pipeline(&self, endpoint: &'static str, body: &[u8]) -> Result<Pipeline> {
        let p: Pipeline = self.decode(endpoint, body)?;
        self.remember_pipeline(&p.slug, p.graphql_id.as_deref(), &p.id, p.branch_configuration.as_deref());
        Ok(p)
    }

    /// `GET /organizations/{org}/pipelines/{slug}`; `None` on 404. Scope `read_pipelines`.
    pub async fn get_pipeline(&self, slug: &str) -> Result<Option<Pipeline>> {
        const EP: &str = "get_pipeline";
        check_slug(EP, slug)?;
        let ans = self.get(EP, self.org_url(&["pipelines", slug]), Priority::Refresh).await?;
        match ans.status {
            s if s.is_success() => Ok(Some(self.decode_pipeline(EP, &ans.body)?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.api_error(EP, &ans)),
        }
    }

    /// Creates a pipeline (`POST /organizations/{org}/pipelines`, scope `write_pipelines`).
    ///
    /// Safe to repeat (the slug is the idempotency key): a `422` "has already been taken"
    /// reads the pipeline with that slug and updates it to `new` (no request when it already
    /// matches). A name taken by a pipeline with another slug stays an error. Retried like
    /// any idempotent request (a retry after a lost answer lands in the 422 path).
    pub async fn create_pipeline(&self, new: &NewPipeline) -> Result<Pipeline> {
        const EP: &str = "create_pipeline";
        check_slug(EP, &new.slug)?;
        if new.repository.trim().is_empty() || new.configuration.trim().is_empty() {
            return Err(Error::InvalidRequest {
                endpoint: EP,
                message: "repository and configuration are required".into(),
            });
        }
        let body = self.json_body(EP, new)?;
        let call = Call {
            endpoint: EP,
            method: Method::POST,
            url: self.org_url(&["pipelines"]),
            body: Some(body),
            priority: Priority::Submit,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        };
        let ans = self.execute(&call).await?;
        if ans.status.is_success() {
            return self.decode_pipeline(EP, &ans.body);
        }
        if ans.status == StatusCode::UNPROCESSABLE_ENTITY && taken(&ans.body) {
            let Some(existing) = self.get_pipeline(&new.slug).await? else {
                // The name is taken by a pipeline with another slug.
                return Err(self.api_error(EP, &ans));
            };
            let patch = PipelinePatch::diff(new, &existing);
            if patch.is_empty() {
                return Ok(existing);
            }
            return self.update_pipeline(&new.slug, &patch).await;
        }
        Err(self.api_error(EP, &ans))
    }

    /// `PATCH /organizations/{org}/pipelines/{slug}` (scope `write_pipelines`).
    pub async fn update_pipeline(&self, slug: &str, patch: &PipelinePatch) -> Result<Pipeline> {
        const EP: &str = "update_pipeline";
        check_slug(EP, slug)?;
        let body = self.json_body(EP, patch)?;
        let call = Call {
            endpoint: EP,
            method: Method::PATCH,
            url: self.org_url(&["pipelines", slug]),
            body: Some(body),
            priority: Priority::Submit,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        };
        let ans = self.execute(&call).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode_pipeline(EP, &ans.body)
    }

    /// `POST …/pipelines/{slug}/unarchive` (scope `write_pipelines`): archived pipelines
    /// take no builds.
    pub async fn unarchive_pipeline(&self, slug: &str) -> Result<Pipeline> {
        const EP: &str = "unarchive_pipeline";
        check_slug(EP, slug)?;
        let call = Call::write(EP, self.org_url(&["pipelines", slug, "unarchive"]), b"{}".to_vec());
        let ans = self.execute(&call).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode_pipeline(EP, &ans.body)
    }

    /// `GET /organizations/{org}/pipeline-settings`: among others the cluster new pipelines
    /// use. Needs scope `read_organization_settings` and an administrator's token; expect
    /// 401/403 otherwise.
    pub async fn organization_pipeline_settings(&self) -> Result<OrganizationPipelineSettings> {
        const EP: &str = "organization_pipeline_settings";
        let ans = self.get(EP, self.org_url(&["pipeline-settings"]), Priority::Refresh).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body)
    }
}

fn taken(body: &[u8]) -> bool {
    let msg = wire::answer_message(body).to_ascii_lowercase();
    msg.contains("already been taken") || msg.contains("already exists")
}
