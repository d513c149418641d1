//! Integration tests against real PostgreSQL (primary + streaming replicas) and Redis.
//! Start them with `scripts/services.sh up`; `scripts/test.sh` does everything.

mod alerts;
mod bounded;
mod cache_ops;
mod consistency;
mod degraded;
mod deployments;
mod errors;
mod failover;
mod four_instances;
mod helpers;
mod instances;
mod migrations;
mod operations;
mod outside_writes;
mod pooler;
mod processes;
mod proxy;
mod redis_failures;
mod repairs;
mod replicas;
mod shutdown;
mod sizes;
mod slow_clients;
mod sync;
mod tls;
mod tokens;
mod torture;
mod traces;
mod two_clusters;
