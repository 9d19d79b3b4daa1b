//! Outrigger's wire protocols, generated from `proto/` at build time.
//!
//! `mesh::v1` is the discovery stream between `outrigger control` and every sidecar; the
//! type URLs of the resources it carries are the `TYPE_*` constants below.

pub mod mesh {
    pub mod v1 {
        tonic::include_proto!("mesh.v1");

        /// Resource types, in the order a server pushes them (make-before-break: what a route
        /// refers to arrives before the route).
        pub const TYPE_CLUSTER: &str = "type.outrigger.dev/mesh.v1.Cluster";
        /// Endpoints the control plane's registry knows for an app id (sidecars that
        /// registered on their streams), as a cluster named after the app id.
        pub const TYPE_ENDPOINTS: &str = "type.outrigger.dev/mesh.v1.Endpoints";
        pub const TYPE_ROUTE: &str = "type.outrigger.dev/mesh.v1.Route";
        pub const TYPE_POLICY: &str = "type.outrigger.dev/mesh.v1.Resiliency";
        /// The Dapr `Configuration` (at most one): features, tracing, access control.
        pub const TYPE_CONFIGURATION: &str = "type.outrigger.dev/dapr.v1.Configuration";
        pub const TYPE_COMPONENT: &str = "type.outrigger.dev/dapr.v1.Component";
        pub const TYPE_SUBSCRIPTION: &str = "type.outrigger.dev/dapr.v1.Subscription";
        pub const PUSH_ORDER: [&str; 7] = [
            TYPE_CLUSTER,
            TYPE_ENDPOINTS,
            TYPE_POLICY,
            TYPE_CONFIGURATION,
            TYPE_COMPONENT,
            TYPE_SUBSCRIPTION,
            TYPE_ROUTE,
        ];
    }
}

pub use prost_types::Any;
