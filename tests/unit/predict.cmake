# Prefetch predictor (client/predict.c): digests, selection against a brute-force reference,
# prediction and counters, API misuse.
if(CMOCKA_FOUND AND TARGET kvt_predict)
	add_executable(test_predict ${PROJECT_SOURCE_DIR}/tests/unit/test_predict.c)
	target_link_libraries(test_predict PRIVATE kvt_predict PkgConfig::CMOCKA m)
	kvt_add_test(test_predict COMMAND $<TARGET_FILE:test_predict> LABELS fast)
endif()
# Its prefetch plan (client/predict_sched.c): the budget against the host tier's room, passed
# layers dropped, the order, against a reference model of decode steps.
if(CMOCKA_FOUND AND TARGET kvt_predict)
	add_executable(test_predict_sched ${PROJECT_SOURCE_DIR}/tests/unit/test_predict_sched.c)
	target_link_libraries(test_predict_sched PRIVATE kvt_predict PkgConfig::CMOCKA)
	kvt_add_test(test_predict_sched COMMAND $<TARGET_FILE:test_predict_sched> LABELS fast)
endif()
