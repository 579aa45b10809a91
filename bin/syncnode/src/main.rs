//! The `syncnode` command line: thin parsing and dispatch over the library crates.

#![forbid(unsafe_code)]

mod chain;
mod cli;
mod db;
mod db_import;
mod devnet;
mod http_client;
mod link_args;
mod progress;
mod run;
mod run_config;
mod status;
mod subscribe;

use std::io::IsTerminal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli.log);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(command: cli::Command) -> anyhow::Result<std::process::ExitCode> {
    use cli::{ChainCommand, Command, DbCommand};
    match command {
        Command::Chain(ChainCommand::Spec(args)) => chain::spec(args),
        Command::Chain(ChainCommand::Generate(args)) => chain::generate(args),
        Command::Db(DbCommand::Check(args)) => db::check(args),
        Command::Db(DbCommand::Export(args)) => db::export(args),
        Command::Db(DbCommand::Import(args)) => db_import::import(args),
        Command::Db(DbCommand::Repair(args)) => db::repair(args),
        Command::Run(args) => run::run(*args),
        Command::Devnet(args) => devnet::devnet(args),
        Command::Status(args) => status::status(args),
        Command::Subscribe(args) => subscribe::subscribe(args),
    }
}

fn init_logging(opts: &cli::LogOptions) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&opts.log_level));
    // Colour only for a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match opts.log_format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}
