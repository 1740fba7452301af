//! The benchmark's reference: a bare hyper server that reads the body and answers a fixed allow,
//! served the way mqgate's listener serves (`http::serve`): multi-thread tokio, HTTP/1.1
//! keep-alive, no Nagle, pipeline flush, a 10 s header-read timeout (mqgate's default). The timeout
//! runs on hyper's stock tokio timer (`TokioTimer`), which sets and clears a timer per request;
//! mqgate keeps the same timeout with one alarm per connection (`http::timer`).
//!
//! `cargo run --release --example bare_server -- 127.0.0.1:18081`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

async fn allow(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::from_static(br#"{"result":"allow"}"#)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    eprintln!("bare server on {addr}");
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .keep_alive(true)
                .pipeline_flush(true)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(allow))
                .await;
        });
    }
}
