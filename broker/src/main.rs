use clap::Parser;
use spate_broker::config::{Args, Config};

fn main() {
    let args = Args::parse();
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spated: configuration error: {e:#}");
            std::process::exit(2);
        }
    };
    spate_broker::node::init_tracing(&config.log_filter);
    if let Err(e) = spate_broker::node::run(config) {
        tracing::error!("spated failed: {e:#}");
        eprintln!("spated: {e:#}");
        std::process::exit(1);
    }
}
