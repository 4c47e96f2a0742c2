# The remote tier (tiers/tier_remote.c, tiers/redis_cluster.c) against real redis-server
# processes on loopback that the test starts (a 6-node cluster, a plain Redis, fake nodes,
# a fault-injecting proxy).  One scenario per ctest entry; each cluster uses its own free
# ports, so they may run in parallel.  Exit 77 (skipped) without redis-server.
if(TARGET kvt_tier_remote)
	add_executable(test_remote ${CMAKE_CURRENT_LIST_DIR}/test_remote.c
		${CMAKE_CURRENT_LIST_DIR}/redis_harness.c)
	target_include_directories(test_remote PRIVATE ${CMAKE_CURRENT_LIST_DIR})
	target_link_libraries(test_remote PRIVATE kvt_tier_remote Threads::Threads)
	kvt_add_test(remote_standalone COMMAND $<TARGET_FILE:test_remote> standalone
		LABELS remote TIMEOUT 120)
	kvt_add_test(remote_malformed COMMAND $<TARGET_FILE:test_remote> malformed
		LABELS remote fast TIMEOUT 60)
	foreach(s slots reshard ask kill stop alldown proxy)
		kvt_add_test(remote_${s} COMMAND $<TARGET_FILE:test_remote> ${s}
			LABELS remote slow TIMEOUT 180)
	endforeach()
endif()

# Two kvtierd as two hosts of a fleet sharing the remote tier (daemon/remote_place.c): a
# prefix put through one is served bit-exact through the other; a corrupt value is a miss;
# a cluster that is down gives misses within the deadlines; a silent node fills the bounded
# write-behind queue without holding up a put.  scripts/fleet.sh is the demo with real KV.
if(TARGET kvt_tier_remote AND TARGET kvtierd)
	add_executable(test_fleet ${CMAKE_CURRENT_LIST_DIR}/test_fleet.c
		${CMAKE_CURRENT_LIST_DIR}/redis_harness.c ${CMAKE_CURRENT_LIST_DIR}/harness.c)
	target_include_directories(test_fleet PRIVATE ${CMAKE_CURRENT_LIST_DIR})
	target_link_libraries(test_fleet PRIVATE kvtier PkgConfig::HIREDIS Threads::Threads)
	foreach(s fleet corrupt down failover auth queue)
		kvt_add_test(remote_fleet_${s}
			COMMAND $<TARGET_FILE:test_fleet> $<TARGET_FILE:kvtierd>
				$<TARGET_FILE:kvtierctl> ${s}
			LABELS remote slow TIMEOUT 180)
	endforeach()
endif()
