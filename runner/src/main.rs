//! `hk`: the command line of hk. It is the only place where errors become text for a person
//! (anyhow at this edge, thiserror in the libraries below) and where exit codes are chosen.

mod build;
mod compose;
mod container;
mod gitlab;
mod host;
mod images;
mod info;
mod initramfs;
mod lab;
mod lifecycle;
mod network;
mod passt;
mod run;
mod supervisor;
mod term;
mod vm;
mod volume;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hk",
    version,
    about = "Run containers, each in its own microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Each command's flags are defined only when that command is run (`defer`): building
/// clap's definition of every command's flags at each start was a fifth of the page faults
/// of every hk process (310 against 244 for `hk gitlab config`), and a CI job's driver
/// starts four of them.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Run a command in a new container, in its own microVM
    Run(Box<run::RunArgs>),
    /// Run a command in a running container
    Exec(run::ExecArgs),
    /// Run a fleet of containers from a Compose file
    Compose(Box<compose::ComposeArgs>),
    /// Build an image from a Dockerfile, each RUN step in a microVM of its own
    Build(Box<build::BuildArgs>),
    /// Manage the build cache
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// GitLab Runner's custom executor driver: one microVM per CI job (docs/gitlab.md)
    #[command(subcommand)]
    Gitlab(gitlab::GitlabCommand),
    /// List containers
    Ps(lifecycle::PsArgs),
    /// Start one or more stopped containers
    Start(run::StartArgs),
    /// Stop one or more running containers
    Stop(lifecycle::StopArgs),
    /// Restart one or more containers
    Restart(lifecycle::StopArgs),
    /// Send a signal to one or more running containers
    Kill(lifecycle::KillArgs),
    /// Remove one or more containers
    Rm(lifecycle::RmArgs),
    /// Fetch the logs of a container
    Logs(lifecycle::LogsArgs),
    /// Display detailed information on one or more containers
    Inspect(lifecycle::NamesArgs),
    /// List a container's published ports, or the host addresses of one
    Port(lifecycle::PortArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(lifecycle::NamesArgs),
    /// Manage containers
    #[command(subcommand)]
    Container(lifecycle::ContainerCommand),
    /// Show where hk finds its kernel and whether this host can run VMs
    Info(info::Args),
    /// Download an image from a registry
    Pull(images::PullArgs),
    /// Upload an image to a registry
    Push(images::PushArgs),
    /// List images
    Images(images::ImagesArgs),
    /// Remove one or more images
    Rmi(images::RmiArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(images::TagArgs),
    /// Load images from a tar archive or stdin
    Load(images::LoadArgs),
    /// Save images to a tar archive (streamed to stdout by default)
    Save(images::SaveArgs),
    /// Manage images
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Log in to a registry
    Login(images::LoginArgs),
    /// Log out from a registry
    Logout(images::LogoutArgs),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Low-level VM commands, for people who embed or debug hk's VMM
    #[command(subcommand)]
    Vm(Box<vm::VmCommand>),
}

#[derive(Subcommand)]
enum BuilderCommand {
    /// Remove the build cache (cached steps, cache mounts)
    Prune(build::PruneArgs),
    /// One RUN step's VM, started by hk build
    #[command(hide = true)]
    Step { dir: std::path::PathBuf },
}

/// Docker and Podman exit with 125 when the failure is the runner's own rather than the
/// container's; hk keeps that convention so scripts written for them keep working.
pub(crate) const EXIT_RUNNER_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Exec(args) => run::exec(args),
        Command::Compose(args) => compose::run(*args),
        Command::Build(args) => build::build(*args),
        Command::Builder(BuilderCommand::Prune(args)) => build::prune(args),
        Command::Builder(BuilderCommand::Step { dir }) => build::step_child(&dir),
        Command::Gitlab(cmd) => gitlab::run(cmd),
        Command::Ps(args) => lifecycle::ps(args),
        Command::Start(args) => run::start(args),
        Command::Stop(args) => lifecycle::stop(args),
        Command::Restart(args) => lifecycle::restart(args),
        Command::Kill(args) => lifecycle::kill(args),
        Command::Rm(args) => lifecycle::rm(args),
        Command::Logs(args) => lifecycle::logs(args),
        Command::Inspect(args) => lifecycle::inspect(args),
        Command::Wait(args) => lifecycle::wait(args),
        Command::Port(args) => lifecycle::port(args),
        Command::Container(cmd) => lifecycle::container(cmd),
        Command::Info(args) => info::run(args),
        Command::Pull(args) => images::pull(args),
        Command::Push(args) => images::push(args),
        Command::Images(args) => images::images(args),
        Command::Rmi(args) => images::rmi(args),
        Command::Tag(args) => images::tag(args),
        Command::Load(args) => images::load(args),
        Command::Save(args) => images::save(args),
        Command::Image(cmd) => images::image(cmd),
        Command::Login(args) => images::login(args),
        Command::Logout(args) => images::logout(args),
        Command::Network(cmd) => network::run(cmd),
        Command::Volume(cmd) => volume::run(cmd),
        Command::Vm(cmd) => vm::run(*cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hk: {err:#}");
            ExitCode::from(EXIT_RUNNER_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command line's definition (clashing flags, say) only in debug builds
    /// and only when that command is parsed; this checks every command at once.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// A command's flags are added when it runs (`defer`), and with them the doc comment of
    /// their struct, which clap would take for the command's help text: each command must
    /// keep its own.
    #[test]
    fn each_command_keeps_its_own_help_text() {
        use clap::CommandFactory;
        let lazy = super::Cli::command();
        let mut built = super::Cli::command();
        built.build();
        for (l, b) in lazy.get_subcommands().zip(built.get_subcommands()) {
            let text = |c: &clap::Command| {
                (
                    c.get_about().map(ToString::to_string),
                    c.get_long_about().map(ToString::to_string),
                )
            };
            assert_eq!(text(l), text(b), "hk {}", l.get_name());
        }
    }
}
