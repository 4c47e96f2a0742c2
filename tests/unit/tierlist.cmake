# The tier list and placement without a daemon process (daemon/tierlist.c, placement), and the
# host tier through its ops table (tiers/tier_host.c).
if(CMOCKA_FOUND)
	add_executable(test_tier_list ${PROJECT_SOURCE_DIR}/tests/unit/test_tier_list.c)
	target_link_libraries(test_tier_list PRIVATE kvtd_core PkgConfig::CMOCKA)
	kvt_add_test(unit_tier_list COMMAND $<TARGET_FILE:test_tier_list> LABELS unit fast
		TIMEOUT 120)
	add_executable(test_tier_host ${PROJECT_SOURCE_DIR}/tests/unit/test_tier_host.c)
	target_link_libraries(test_tier_host PRIVATE kvt_tiers PkgConfig::CMOCKA)
	target_compile_definitions(test_tier_host PRIVATE _GNU_SOURCE)
	kvt_add_test(unit_tier_host COMMAND $<TARGET_FILE:test_tier_host> LABELS unit fast)
endif()

# codec = auto's choice rule (daemon/codec_auto.c).
if(CMOCKA_FOUND)
	add_executable(test_codec_auto_pick ${PROJECT_SOURCE_DIR}/tests/unit/test_codec_auto.c)
	target_link_libraries(test_codec_auto_pick PRIVATE kvtd_core PkgConfig::CMOCKA)
	kvt_add_test(unit_codec_auto COMMAND $<TARGET_FILE:test_codec_auto_pick> LABELS unit fast)
endif()
