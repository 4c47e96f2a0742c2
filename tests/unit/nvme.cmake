# NVMe tier and record format (tiers/tier_nvme.c, proto/kvt_record.c).
if(CMOCKA_FOUND)
	add_executable(test_record ${PROJECT_SOURCE_DIR}/tests/unit/test_record.c)
	target_link_libraries(test_record PRIVATE kvt_proto PkgConfig::CMOCKA)
	kvt_add_test(test_record COMMAND $<TARGET_FILE:test_record> LABELS fast)

	add_executable(test_tier_nvme ${PROJECT_SOURCE_DIR}/tests/unit/test_tier_nvme.c)
	target_link_libraries(test_tier_nvme PRIVATE kvt_tiers PkgConfig::CMOCKA)
	kvt_add_test(test_tier_nvme COMMAND $<TARGET_FILE:test_tier_nvme> LABELS fast reliability
		TIMEOUT 120)
endif()
