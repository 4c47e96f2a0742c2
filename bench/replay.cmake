# kvtier-replay: an engine-like workload from a real KV dump, verified bit for bit.
if(TARGET kvtier)
	add_executable(kvtier-replay ${CMAKE_CURRENT_SOURCE_DIR}/kvtier_replay.c)
	target_include_directories(kvtier-replay PRIVATE ${PROJECT_SOURCE_DIR}/client)
	target_link_libraries(kvtier-replay PRIVATE kvt_kvd kvtier)
	install(TARGETS kvtier-replay RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

	# Replay every committed dump (each < 4 MiB of KV) against a daemon of its own: once
	# with a 4 MiB host tier, where the second request must find the whole prompt, and once
	# with a 1 MiB tier, where blocks must be evicted, re-put and still read back exact.
	if(TARGET kvtierd)
		file(GLOB _kvt_replay_dumps CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/data/*.kvd)
		foreach(dump ${_kvt_replay_dumps})
			get_filename_component(_name ${dump} NAME_WE)
			kvt_add_test(replay_${_name}
				COMMAND sh ${PROJECT_SOURCE_DIR}/tests/integration/run_replay.sh
					$<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtier-replay> ${dump}
					--expect-full-hit
				LABELS fast TIMEOUT 120)
			kvt_add_test(replay_${_name}_evict
				COMMAND sh ${PROJECT_SOURCE_DIR}/tests/integration/run_replay.sh
					$<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtier-replay> ${dump}
					--requests 3 --expect-evictions
				LABELS fast TIMEOUT 120 ENVIRONMENT "KVT_REPLAY_CAPACITY=1MiB")
		endforeach()
	endif()
endif()
