# kvtier-restore-bench: one client's batch and serial gets of blocks that are only on the NVMe
# tier (written back, host tier emptied), beside host-tier hits, in one process.
if(TARGET kvtier)
	add_executable(kvtier-restore-bench ${CMAKE_CURRENT_SOURCE_DIR}/restore_bench.c)
	target_include_directories(kvtier-restore-bench PRIVATE ${PROJECT_SOURCE_DIR}/client)
	target_link_libraries(kvtier-restore-bench PRIVATE kvtier)
endif()
