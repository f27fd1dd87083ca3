"""The two-host protocol (DESIGN §5, §6), as the agents carry it: an off-host backup of a transportable set.

systemOne (production) runs the job `offhost-backup` (`production`): it creates the transportable set, grants the
proxy a lease, submits `proxy-backup` on the proxy and waits, its backup session open, for the proxy's report. The
proxy's job (`proxy`) fetches the documents (`GET /v1/sets/{set_id}/documents`), imports (cluster rule on),
exposes, backs up through path mapping, verifies, unexposes, deletes, heartbeating `POST /v1/sets/{set_id}/lease`
meanwhile, and reports (`POST /v1/sets/{set_id}/completion`). Only the proxy named for a set (its lease holder) may
call these three (`routes`). systemOne fires BackupComplete once, only for a successful report; on a failure
report or when the lease runs out by its own clock, it ends the session failed. The proxy cleans up what it holds
when its heartbeat is refused (`LEASE_EXPIRED`) or systemOne stays unreachable longer than the lease; an agent
that restarts cleans up after the jobs it lost (`recovery`). The domain steps themselves are
`snapport.coordinator.offhost`'s; the payloads are in `models`, the sets waiting for a report in `handover`.
"""
