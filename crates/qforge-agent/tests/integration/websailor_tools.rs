//! WebSailor's tools against real HTTP on loopback: the `visit` tool reading pages from a local
//! web server (HTML, a PDF, a huge page, a slow page, a missing page), the released
//! summary-model retries driven by a `ScriptedModelSimulator`, and the Serper client
//! against a `SerperApiSimulator` (the commercial API cannot be reached here; the simulator
//! answers in Serper's JSON shape and checks the key and body a client must send).

use crate::common;
use common::ScriptedModelSimulator;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use qforge_agent::websailor::agent::Tool;
use qforge_agent::websailor::search::{SearchBackend, SerperBackend, run_search};
use qforge_agent::websailor::visit::{ExtractiveSummarizer, HttpPages, LlmSummarizer, VisitTool};
use serde_json::{Value, json};

const KYOTO: &str = "<html><head><title>Kyoto</title><script>track()</script></head><body>\
    <h1>Kyoto</h1><p>Kyoto is a city in Japan. It was the imperial capital from 794 to 1868.</p>\
    <p>Its temples draw many visitors.</p></body></html>";

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn web_server() -> String {
    let app = Router::new()
        .route(
            "/kyoto.html",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], KYOTO) }),
        )
        .route(
            "/paper.pdf",
            get(|| async { ([(header::CONTENT_TYPE, "application/pdf")], "%PDF-1.7 ...") }),
        )
        .route(
            "/huge.html",
            get(|| async {
                let body = format!(
                    "<p>The answer is 42.</p>{}",
                    "<p>filler text</p>".repeat(400_000)
                );
                ([(header::CONTENT_TYPE, "text/html")], body)
            }),
        )
        .route(
            "/slow.html",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                ([(header::CONTENT_TYPE, "text/html")], "<p>late</p>")
            }),
        );
    serve(app).await
}

fn visit_tool(summarizer: Arc<dyn qforge_agent::websailor::visit::Summarizer>) -> VisitTool {
    let pages = HttpPages::new(Duration::from_millis(1500), 1 << 20).unwrap();
    VisitTool::new(Arc::new(pages), summarizer)
}

#[tokio::test]
async fn visit_reads_html_pages_for_a_goal_and_reports_what_it_cannot_read() {
    let web = web_server().await;
    let tool = visit_tool(Arc::new(ExtractiveSummarizer::default()));
    let out = tool
        .call(&json!({"url": format!("{web}/kyoto.html"), "goal": "when was Kyoto the capital"}))
        .await;
    assert!(
        out.starts_with(&format!(
            "The useful information in {web}/kyoto.html for user goal when was Kyoto the capital as follows: \n\nEvidence in page: \n"
        )),
        "{out}"
    );
    assert!(out.contains("imperial capital from 794 to 1868") && out.contains("Summary: \n"));
    assert!(!out.contains("track()"), "scripts are not text: {out}");

    // Several URLs: read concurrently, answered in the order given; failures are explained.
    let urls = [
        format!("{web}/paper.pdf"),
        format!("{web}/missing.html"),
        format!("{web}/slow.html"),
        format!("{web}/huge.html"),
    ];
    let out = tool.call(&json!({"url": urls, "goal": "the answer"})).await;
    let parts: Vec<&str> = out.split("\n=======\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    assert!(
        parts[0].contains("not an HTML or text page (content type application/pdf)"),
        "{}",
        parts[0]
    );
    assert!(parts[1].contains("answered 404"), "{}", parts[1]);
    assert!(parts[2].contains("did not answer in time"), "{}", parts[2]);
    // The huge page is read up to the byte cap and still answers.
    assert!(parts[3].contains("The answer is 42."), "{}", parts[3]);
    for (part, url) in parts.iter().zip(&urls) {
        assert!(part.starts_with(&format!("The useful information in {url} ")));
    }

    // Bad arguments are a message, not an abort.
    for bad in [
        json!({"url": "x"}),
        json!({"goal": "g"}),
        json!({"url": 3, "goal": "g"}),
    ] {
        assert!(
            tool.call(&bad)
                .await
                .starts_with("[visit] Invalid request format")
        );
    }
}

#[tokio::test]
async fn the_summary_model_is_re_asked_on_a_shorter_page_then_until_it_answers_json() {
    let web = web_server().await;
    let model = Arc::new(ScriptedModelSimulator::new(&[
        "{\n",                   // too short: the page was too long for the model
        "{}",                    // still too short: cut again
        "Here you go: not json", // long enough, but no JSON: re-asked
        "{\"rational\": \"the history paragraph\", \"evidence\": \"It was the imperial capital from 794 to 1868.\", \"summary\": \"Capital 794-1868.\"}",
    ]));
    let tool = visit_tool(Arc::new(LlmSummarizer::new(model.clone())));
    let out = tool
        .call(&json!({"url": format!("{web}/kyoto.html"), "goal": "capital years"}))
        .await;
    assert!(
        out.ends_with("Evidence in page: \nIt was the imperial capital from 794 to 1868.\n\nSummary: \nCapital 794-1868."),
        "{out}"
    );
    let sizes: Vec<usize> = model.prompts().iter().map(|p| p.chars().count()).collect();
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    // Each short reply shrank the page (to 70%); the JSON retry re-sent the same page.
    assert!(
        sizes[1] < sizes[0] && sizes[2] < sizes[1] && sizes[3] == sizes[2],
        "{sizes:?}"
    );

    // A model that never answers JSON: the released "could not be processed" answer.
    let silent = Arc::new(ScriptedModelSimulator::new(&[]));
    let tool = visit_tool(Arc::new(LlmSummarizer::new(silent.clone())));
    let out = tool
        .call(&json!({"url": format!("{web}/kyoto.html"), "goal": "g"}))
        .await;
    assert!(out.contains("no information is available"), "{out}");
    assert!(
        out.contains("the summary model gave no usable answer"),
        "{out}"
    );
}

#[derive(Clone, Default)]
struct SerperApiSimulator {
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn serper(sim: SerperApiSimulator) -> String {
    let app = Router::new()
        .route(
            "/search",
            post(move |headers: HeaderMap, body: axum::Json<Value>| {
                let sim = sim.clone();
                async move {
                    if headers.get("x-api-key").and_then(|k| k.to_str().ok()) != Some("test-key") {
                        return (StatusCode::FORBIDDEN, axum::Json(json!({"message": "Unauthorized."})));
                    }
                    let q = body["q"].as_str().unwrap_or("").to_string();
                    sim.bodies.lock().unwrap().push(body.0);
                    if q == "slow" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    let organic = if q == "nothing" {
                        json!([])
                    } else {
                        json!([
                            {"title": "Kyoto - Wikipedia", "link": "https://en.wikipedia.org/wiki/Kyoto",
                             "snippet": "Kyoto was the capital of Japan for over a millennium.",
                             "date": "Mar 3, 2024", "position": 1},
                            {"title": "Kyoto travel", "link": "https://example.org/kyoto",
                             "snippet": "Temples and gardens.", "source": "Example", "position": 2}
                        ])
                    };
                    (StatusCode::OK, axum::Json(json!({"searchParameters": {"q": q}, "organic": organic})))
                }
            }),
        );
    format!("{}/search", serve(app).await)
}

#[tokio::test]
async fn the_serper_client_sends_key_and_query_and_formats_organic_results() {
    let sim = SerperApiSimulator::default();
    let url = serper(sim.clone()).await;
    let backend = SerperBackend::new(&url, "test-key", Duration::from_millis(300)).unwrap();
    let out = run_search(&backend, &["kyoto capital".into(), "nothing".into()], 10).await;
    assert_eq!(
        out,
        "A Google search for 'kyoto capital' found 2 results:\n\n## Web Results\n\
         1. [Kyoto - Wikipedia](https://en.wikipedia.org/wiki/Kyoto)\nDate published: Mar 3, 2024\n\n\
         Kyoto was the capital of Japan for over a millennium.\n\n\
         2. [Kyoto travel](https://example.org/kyoto)\nSource: Example\n\nTemples and gardens.\
         \n=======\nNo results found for 'nothing'. Try with a more general query, or remove the year filter."
    );
    assert_eq!(
        sim.bodies.lock().unwrap()[0],
        json!({"q": "kyoto capital", "num": 10})
    );

    // A wrong key is the API's answer, shown to the model; a timeout is retried, then reported.
    let wrong = SerperBackend::new(&url, "nope", Duration::from_millis(300)).unwrap();
    let err = wrong.search("q", 10).await.unwrap_err();
    assert!(err.contains("403") && err.contains("Unauthorized"), "{err}");
    let err = backend.search("slow", 10).await.unwrap_err();
    assert_eq!(err, "the search API timed out (after 5 tries)");
}
