//! MyPageService over gRPC.

use std::sync::Arc;
use std::time::Duration;

use rentalbook_plumbing::auth::Caller;
use rentalbook_plumbing::error::ServiceError;
use rentalbook_plumbing::time;
use rentalbook_proto::view::v1::{
    GetMyPageRequest, MyPage, WatchMyPageRequest, my_page_service_server::MyPageService,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::pages;
use crate::watch::Watchers;

pub struct MyPages {
    pub watchers: Arc<Watchers>,
    /// Ends the open watch streams when the service shuts down.
    pub shutdown: CancellationToken,
    /// How long a watch stream may stay silent before the page it last got
    /// is sent again: proxies on the way (Envoy's stream idle timeout)
    /// reset a stream on which nothing moves.
    pub heartbeat: Duration,
}

/// The longest a watch stream waits for its next rebuild or heartbeat.
const LONGEST_WAIT: Duration = Duration::from_secs(86_400);

/// Pages a slow watcher may have queued before it holds up only itself.
const WATCH_BUFFER: usize = 4;

/// How long the end of a stream whose token expired waits for room behind
/// a slow watcher's queued pages before the stream just ends.
const EXPIRY_NOTICE: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl MyPageService for MyPages {
    async fn get_my_page(
        &self,
        request: Request<GetMyPageRequest>,
    ) -> Result<Response<MyPage>, Status> {
        let caller = Caller::of(&request)?;
        let member = caller.subject(&request.get_ref().member_id)?;
        let (page, _) = pages::build(self.watchers.db.conn(), member.as_str(), time::now())
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(page))
    }

    type WatchMyPageStream = ReceiverStream<Result<MyPage, Status>>;

    async fn watch_my_page(
        &self,
        request: Request<WatchMyPageRequest>,
    ) -> Result<Response<Self::WatchMyPageStream>, Status> {
        let caller = Caller::of(&request)?;
        let member = caller.subject(&request.get_ref().member_id)?.to_string();
        // The stream lives as long as the token it was opened with would be
        // taken: a watcher whose sign-in has expired must sign in again.
        let expires = Instant::now().checked_add(caller.valid_for());
        let watchers = self.watchers.clone();
        let shutdown = self.shutdown.clone();
        let heartbeat = self.heartbeat;
        let mut changes = watchers.subscribe(&member);
        let (out, stream) = mpsc::channel(WATCH_BUFFER);
        metrics::gauge!("mypage_watch_streams").increment(1.0);
        tokio::spawn(async move {
            let mut last: Option<MyPage> = None;
            let mut sent_at = Instant::now();
            'build: loop {
                changes.mark_unchanged();
                let now = time::now();
                let (page, next_change) = match pages::build(watchers.db.conn(), &member, now).await
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = out.send(Err(ServiceError::from(e).into())).await;
                        break;
                    }
                };
                if last.as_ref().is_none_or(|l| !pages::same(l, &page)) {
                    if out.send(Ok(page.clone())).await.is_err() {
                        break;
                    }
                    last = Some(page);
                    sent_at = Instant::now();
                }
                // Wake for a change, for the next due date to pass, or not at
                // all; a day at most for either wait, so that no deadline
                // can overflow.
                let clock = next_change
                    .and_then(|t| (t - now).to_std().ok())
                    .map(|d| d + Duration::from_millis(5))
                    .unwrap_or(Duration::from_secs(3600))
                    .min(LONGEST_WAIT);
                let rebuild_at = Instant::now() + clock;
                let silence = heartbeat.min(LONGEST_WAIT);
                loop {
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { break 'build } else { continue 'build },
                        _ = tokio::time::sleep_until(rebuild_at) => continue 'build,
                        _ = tokio::time::sleep_until(sent_at + silence) => {
                            // The page is still current (any change wakes the
                            // loop above), so it is resent as it is, without
                            // a read. A full buffer means the stream is not
                            // idle: nothing to add then.
                            if let Some(page) = &last
                                && let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(Ok(page.clone()))
                            {
                                break 'build;
                            }
                            sent_at = Instant::now();
                        }
                        // Armed once the expiry comes before the next rebuild
                        // (a day at most away).
                        _ = tokio::time::sleep_until(expires.unwrap_or(rebuild_at)),
                            if expires.is_some_and(|e| e <= rebuild_at) => {
                            let expired = rentalbook_plumbing::error::unauthenticated(
                                "the sign-in has expired: sign in again to keep following this page",
                            );
                            let _ = tokio::time::timeout(EXPIRY_NOTICE, out.send(Err(expired))).await;
                            break 'build;
                        }
                        _ = out.closed() => break 'build,
                        _ = shutdown.cancelled() => break 'build,
                    }
                }
            }
            metrics::gauge!("mypage_watch_streams").decrement(1.0);
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
