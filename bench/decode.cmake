# kvtier-decode-replay: decode steps of a real dump with and without the prefetch predictor.
if(TARGET kvtier AND TARGET kvtierd)
	add_executable(kvtier-decode-replay ${CMAKE_CURRENT_SOURCE_DIR}/kvtier_decode_replay.c)
	target_link_libraries(kvtier-decode-replay PRIVATE kvt_kvd kvtier kvt_codecs m)
	target_compile_definitions(kvtier-decode-replay PRIVATE _GNU_SOURCE)
	install(TARGETS kvtier-decode-replay RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
	file(GLOB _kvt_decode_dumps CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/data/*q128*.kvd)
	foreach(dump ${_kvt_decode_dumps})
		get_filename_component(_name ${dump} NAME_WE)
		kvt_add_test(decode_replay_${_name}
			COMMAND $<TARGET_FILE:kvtier-decode-replay> --steps 64 --step-us 500
				--host 0.25,0.5 --unbudgeted
				--daemon $<TARGET_FILE:kvtierd> --ctl $<TARGET_FILE:kvtierctl> ${dump}
			LABELS slow TIMEOUT 300)
	endforeach()
endif()
