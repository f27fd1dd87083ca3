"""The agent: each host's HTTPS service (mutual TLS only), its certificates, jobs and client (docs/agent.md).

- `certs`: the site CA, host certificates, and the identity (host, role) a certificate carries;
- `config`: `$SNAPPORT_HOME/agent.toml`;
- `dispatch`: the route table, authentication and authorisation, errors as JSON;
- `jobs`: long operations run in a bounded pool with a FIFO queue, their state in the catalog;
- `routes`, `api`, `openapi`: the core API, its payloads and its generated OpenAPI document;
- `registry`: what an agent serves (routes and job kinds); `server`: `snapport agent serve`;
- `client`: another host's agent, from this host.
"""
