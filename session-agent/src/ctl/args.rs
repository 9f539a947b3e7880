//! How the CLI reaches the agent: its API socket, and JSON or tables.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use session_api::ApiClient;

#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// The agent's control API socket.
    #[arg(long, default_value = "/run/session-agent/api.sock", global = true)]
    pub(super) api_socket: PathBuf,
    /// Print JSON (the API's answer) instead of a table.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

impl ApiArgs {
    pub(super) fn client(&self) -> ApiClient {
        ApiClient::new(&self.api_socket)
    }

    /// Sends `body`, one of the API's request types, as JSON.
    pub(super) fn send<B: Serialize>(&self, method: &str, path: &str, body: &B) -> Result<Value> {
        let body = serde_json::to_value(body)?;
        Ok(self.client().call(method, path, Some(&body))?)
    }
}
