//! `qforge template`: the exact prompt a model sees for a conversation.

use std::io::Write;

use anyhow::Result;

use crate::common::{ModelArgs, TemplateArgs, read_conversation};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Prints the rendered text exactly (no newline is added), or with --ids the token\n\
    ids as a JSON array. Rendering follows transformers' apply_chat_template.\n\nExample:\n  \
    echo '[{\"role\":\"user\",\"content\":\"hi\"}]' | qforge template --messages - --enable-thinking false"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,

    /// Conversation file (JSON array of messages, or {"messages": [...], "tools": [...]}); `-`
    /// for standard input.
    #[arg(long)]
    messages: String,

    #[command(flatten)]
    template: TemplateArgs,

    /// Print token ids (JSON array) instead of text.
    #[arg(long)]
    ids: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.model.dir()?;
    // Only the tokenizer is needed: do not load weights.
    let tokenizer = qforge_model::Tokenizer::from_dir(&dir)?;
    let (messages, tools) = read_conversation(&args.messages)?;
    let text = tokenizer.apply_chat_template(&messages, &args.template.options(tools)?)?;
    let mut out = std::io::stdout().lock();
    if args.ids {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&tokenizer.encode(&text, false)?)?
        )?;
    } else {
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}
