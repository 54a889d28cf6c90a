// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MeteringLedgerBase} from "./MeteringLedgerBase.sol";

/**
 * @title MeteringLedgerExtension
 * @notice The MeteringLedger's less frequent operations: signer rotation and recovery, nonce cancellation,
 * scheduled tariffs, settlement roots, disputes and reversals. Call them on the ledger's address: its
 * fallback runs this code by `delegatecall` on the ledger's storage. The ledger deploys this contract
 * in its own constructor, with the same parameters; see `MeteringLedgerBase` for why the code is split.
 * @dev Security considerations: called directly (not through the ledger) every function reverts with
 * `ExtensionCalledDirectly`, so this contract's own storage is never written.
 */
contract MeteringLedgerExtension is MeteringLedgerBase {
    /// @dev This contract's own address, to tell a direct call from a delegated one.
    address private immutable _SELF;

    /// @dev Parameters as `MeteringLedger`'s constructor.
    constructor(address admin, uint48 adminTransferDelay, uint256 recoveryDelay, uint256 disputeWindow)
        MeteringLedgerBase(admin, adminTransferDelay, recoveryDelay, disputeWindow)
    {
        _SELF = address(this);
    }

    /// @dev Runs the function only on the ledger's storage (through its fallback), never on this contract's own.
    modifier onlyDelegated() {
        if (address(this) == _SELF) revert ExtensionCalledDirectly();
        _;
    }

    /**
     * @notice Registers the institution whose permanent account and initial signer is `account`, with the
     * consent of that key: `signature` is its EIP-712 `Registration(institution, code, name, deadline)`.
     * @param account The institution's wallet; it becomes its permanent account address.
     * @param code The institution's official code (non-zero, unique).
     * @param displayName Display name. Public: an organisation's name, never a person's.
     * @param creditLine Units the institution may be debited beyond its balance.
     * @param deadline Last timestamp at which the consent is valid.
     * @param signature 65-byte signature (r || s || v) of the `Registration` by `account`.
     */
    function registerInstitution(
        address account,
        bytes32 code,
        string calldata displayName,
        uint64 creditLine,
        uint64 deadline,
        bytes calldata signature
    ) external onlyDelegated onlyRole(REGISTRAR_ROLE) {
        if (account == address(0)) revert InvalidInstitutionAddress(account);
        if (code == bytes32(0)) revert InvalidInstitutionCode(code);
        if (_profiles[account].status != InstitutionStatus.None) revert InstitutionAlreadyRegistered(account);
        address holder = _institutionByCode[code];
        if (holder != address(0)) revert InstitutionCodeTaken(code, holder);
        address signerOwner = _institutionBySigner[account];
        if (signerOwner != address(0)) revert SignerAlreadyInUse(account, signerOwner);
        _checkDeadline(deadline);
        bytes32 structHash =
            keccak256(abi.encode(REGISTRATION_TYPEHASH, account, code, keccak256(bytes(displayName)), deadline));
        address recovered = ECDSA.recover(_hashTypedDataV4(structHash), signature);
        if (recovered != account) revert InvalidRegistrationSigner(account, recovered);

        _profiles[account] = Profile({signer: account, creditLine: creditLine, status: InstitutionStatus.Active});
        _codes[account] = code;
        _names[account] = displayName;
        _institutionByCode[code] = account;
        _institutionBySigner[account] = account;
        _counters[account] = PackedCounters({a: COUNTERS_SENTINEL, b: COUNTERS_SENTINEL});
        _institutions.push(account);
        emit InstitutionRegistered(account, code, displayName, creditLine);
    }

    /**
     * @notice Suspends an institution: its signatures are refused and it cannot be credited.
     * @dev Its balance and debt are frozen, not cleared.
     */
    function suspendInstitution(address account) external onlyDelegated onlyRole(REGISTRAR_ROLE) {
        _setStatus(account, InstitutionStatus.Active, InstitutionStatus.Suspended);
        emit InstitutionSuspended(account);
    }

    /// @notice Reinstates a suspended institution.
    function reinstateInstitution(address account) external onlyDelegated onlyRole(REGISTRAR_ROLE) {
        _setStatus(account, InstitutionStatus.Suspended, InstitutionStatus.Active);
        emit InstitutionReinstated(account);
    }

    /// @notice Sets the units an institution may be debited beyond its balance.
    /// @dev Lowering it below the current debt refuses further debits until the debt is repaid.
    function setCreditLine(address account, uint64 creditLine) external onlyDelegated onlyRole(REGISTRAR_ROLE) {
        Profile storage profile = _requireRegistered(account);
        uint256 previous = profile.creditLine;
        profile.creditLine = creditLine;
        emit CreditLineChanged(account, previous, creditLine);
    }

    /**
     * @notice Sets the units per record of a data category for sync and fetch, at once. An exchange
     * is priced at the fetch rate. Every call is a new tariff version.
     * @dev Signed interactions priced at the old rate are refused (`UnitsMismatch`), never repriced.
     * @param label Human-readable category name carried in the event (e.g. "laboratory").
     */
    function setRate(uint16 category, uint64 syncUnitsPerRecord, uint64 fetchUnitsPerRecord, string calldata label)
        external onlyDelegated
        onlyRole(TARIFF_ROLE)
    {
        _checkRate(syncUnitsPerRecord);
        _checkRate(fetchUnitsPerRecord);
        _applyRate(category, syncUnitsPerRecord, fetchUnitsPerRecord, label);
    }

    /// @notice Sets the platform fee on exchanges in basis points (at most 10,000), at once.
    function setPlatformFee(uint16 feeBps) external onlyDelegated onlyRole(TARIFF_ROLE) {
        _checkFee(feeBps);
        _applyPlatformFee(feeBps);
    }

    /**
     * @notice Closes the current settlement period. It spans from its start block to the block before this
     * one, so the state at its `toBlock` is final for the period; its row count is the number of institutions
     * registered by then. Tariff changes scheduled for the next period take effect now.
     */
    function closePeriod() external onlyDelegated onlyRole(SETTLER_ROLE) {
        Config storage config = _config;
        uint256 period = config.currentPeriod;
        uint256 fromBlock = config.periodStartBlock;
        if (block.number <= fromBlock) revert PeriodHasNoBlocks(period, fromBlock);
        uint256 toBlock = block.number - 1;
        uint256 count = _institutions.length;
        _periods[period] =
            PeriodRange({fromBlock: uint64(fromBlock), toBlock: uint64(toBlock), institutionCount: uint64(count)});
        config.currentPeriod = uint64(period + 1);
        config.periodStartBlock = uint64(block.number);
        emit PeriodClosed(period, fromBlock, toBlock);
        _applyScheduledTariff();
    }

    function _setStatus(address account, InstitutionStatus from, InstitutionStatus to) private {
        Profile storage profile = _requireRegistered(account);
        if (profile.status != from) revert InstitutionStatusUnchanged(account, profile.status);
        profile.status = to;
    }

    function _applyScheduledTariff() private {
        uint256 count = _scheduledCategories.length;
        for (uint256 i; i < count; ++i) {
            uint16 category = _scheduledCategories[i];
            Rate memory rate = _scheduledRates[category];
            _applyRate(category, rate.syncUnitsPerRecord, rate.fetchUnitsPerRecord, _scheduledLabels[category]);
            delete _scheduledRates[category];
            delete _scheduledLabels[category];
        }
        delete _scheduledCategories;
        ScheduledFee memory fee = _scheduledFee;
        if (fee.pending) {
            _applyPlatformFee(fee.feeBps);
            delete _scheduledFee;
        }
    }

    /**
     * @notice Replaces an institution's signer key at once, with the consent of both keys: the current signer
     * signs `SignerRotation(institution, newSigner, nonce, deadline)` and the new key signs
     * `SignerAcceptance` over the same fields (its proof of possession). Any relayer submits it.
     * @dev Security considerations: interactions signed by the old key but not yet relayed are refused from
     * now on; a pending recovery is cancelled (the institution evidently holds its key).
     * @param nonce The institution's registry nonce (`registryNonce`), consumed by this rotation.
     */
    function rotateSigner(
        address account,
        address newSigner,
        uint256 nonce,
        uint64 deadline,
        bytes calldata signerSignature,
        bytes calldata newSignerSignature
    ) external onlyDelegated onlyRole(RELAYER_ROLE) {
        Profile storage profile = _requireRegistered(account);
        _checkNewSigner(account, newSigner);
        _checkRegistryNonce(account, nonce);
        _checkDeadline(deadline);
        address current = profile.signer;
        _requireSignedBy(
            account,
            current,
            keccak256(abi.encode(SIGNER_ROTATION_TYPEHASH, account, newSigner, nonce, deadline)),
            signerSignature
        );
        address possessor = ECDSA.recover(
            _hashTypedDataV4(keccak256(abi.encode(SIGNER_ACCEPTANCE_TYPEHASH, account, newSigner, nonce, deadline))),
            newSignerSignature
        );
        if (possessor != newSigner) revert InvalidPossessionProof(newSigner, possessor);
        Registry storage registry = _registry[account];
        address pending = registry.pendingSigner;
        if (pending != address(0)) {
            registry.pendingSigner = address(0);
            registry.recoveryReadyAt = 0;
            emit RecoveryCancelled(account, pending, msg.sender);
        }
        _replaceSigner(account, profile, current, newSigner);
    }

    /**
     * @notice Starts the recovery of an institution that lost its key: `newSigner` becomes its signer when
     * `completeRecovery` is called `RECOVERY_DELAY` seconds from now, unless the current signer cancels first.
     */
    function startRecovery(address account, address newSigner) external onlyDelegated onlyRole(REGISTRAR_ROLE) {
        _requireRegistered(account);
        _checkNewSigner(account, newSigner);
        Registry storage registry = _registry[account];
        address pending = registry.pendingSigner;
        if (pending != address(0)) revert RecoveryAlreadyPending(account, pending, registry.recoveryReadyAt);
        uint256 readyAt = block.timestamp + RECOVERY_DELAY;
        registry.pendingSigner = newSigner;
        registry.recoveryReadyAt = uint64(readyAt);
        emit RecoveryStarted(account, newSigner, readyAt);
    }

    /// @notice Cancels the pending recovery of `account`; only its current signer may call this.
    function cancelRecovery(address account) external onlyDelegated {
        Profile storage profile = _requireRegistered(account);
        if (msg.sender != profile.signer) revert NotInstitutionSigner(account, msg.sender, profile.signer);
        _cancelRecovery(account);
    }

    /**
     * @notice Cancels the pending recovery of `account` with its current signer's EIP-712
     * `RecoveryCancellation(institution, newSigner, nonce, deadline)`; anyone may submit it.
     */
    function cancelRecoveryBySig(address account, uint256 nonce, uint64 deadline, bytes calldata signature)
        external onlyDelegated
    {
        Profile storage profile = _requireRegistered(account);
        _checkRegistryNonce(account, nonce);
        _checkDeadline(deadline);
        address pending = _registry[account].pendingSigner;
        _requireSignedBy(
            account,
            profile.signer,
            keccak256(abi.encode(RECOVERY_CANCELLATION_TYPEHASH, account, pending, nonce, deadline)),
            signature
        );
        _cancelRecovery(account);
    }

    /// @notice Completes a pending recovery once its delay has passed; anyone may call this.
    function completeRecovery(address account) external onlyDelegated {
        Profile storage profile = _requireRegistered(account);
        Registry storage registry = _registry[account];
        address newSigner = registry.pendingSigner;
        if (newSigner == address(0)) revert NoRecoveryPending(account);
        uint256 readyAt = registry.recoveryReadyAt;
        if (block.timestamp < readyAt) revert RecoveryNotReady(account, readyAt, block.timestamp);
        _checkNewSigner(account, newSigner); // it may have been taken by another institution meanwhile
        registry.pendingSigner = address(0);
        registry.recoveryReadyAt = 0;
        address previous = profile.signer;
        _replaceSigner(account, profile, previous, newSigner);
        emit RecoveryCompleted(account, previous, newSigner);
    }

    /**
     * @notice Invalidates nonces of `account` that were not relayed: bit `i` of `mask` is nonce
     * `wordIndex * 256 + i` (one nonce, a range within the word, or all 256). Only its signer may call this.
     */
    function cancelNonces(address account, uint256 wordIndex, uint256 mask) external onlyDelegated {
        Profile storage profile = _requireRegistered(account);
        if (msg.sender != profile.signer) revert NotInstitutionSigner(account, msg.sender, profile.signer);
        _cancelNonces(account, wordIndex, mask);
    }

    /**
     * @notice As `cancelNonces`, authorised by the signer's EIP-712
     * `NonceCancellation(institution, wordIndex, mask, deadline)`; anyone may submit it (a replay changes nothing).
     */
    function cancelNoncesBySig(
        address account,
        uint256 wordIndex,
        uint256 mask,
        uint64 deadline,
        bytes calldata signature
    ) external onlyDelegated {
        Profile storage profile = _requireRegistered(account);
        _checkDeadline(deadline);
        _requireSignedBy(
            account,
            profile.signer,
            keccak256(abi.encode(NONCE_CANCELLATION_TYPEHASH, account, wordIndex, mask, deadline)),
            signature
        );
        _cancelNonces(account, wordIndex, mask);
    }

    /**
     * @notice Schedules a rate to take effect when the settler closes the current period, so institutions see
     * it before it applies. Scheduling the same category again replaces the scheduled rate.
     */
    function scheduleRate(
        uint16 category,
        uint64 syncUnitsPerRecord,
        uint64 fetchUnitsPerRecord,
        string calldata label
    ) external onlyDelegated onlyRole(TARIFF_ROLE) {
        _checkRate(syncUnitsPerRecord);
        _checkRate(fetchUnitsPerRecord);
        Rate storage scheduled = _scheduledRates[category];
        if (!scheduled.defined) {
            if (_scheduledCategories.length == MAX_SCHEDULED_RATES) revert TooManyScheduledRates(MAX_SCHEDULED_RATES);
            _scheduledCategories.push(category);
        }
        _scheduledRates[category] =
            Rate({syncUnitsPerRecord: syncUnitsPerRecord, fetchUnitsPerRecord: fetchUnitsPerRecord, defined: true});
        _scheduledLabels[category] = label;
        emit TariffRateScheduled(_config.currentPeriod + 1, category, syncUnitsPerRecord, fetchUnitsPerRecord, label);
    }

    /// @notice Schedules the platform fee to take effect when the settler closes the current period.
    function schedulePlatformFee(uint16 feeBps) external onlyDelegated onlyRole(TARIFF_ROLE) {
        _checkFee(feeBps);
        _scheduledFee = ScheduledFee({feeBps: feeBps, pending: true});
        emit PlatformFeeScheduled(_config.currentPeriod + 1, feeBps);
    }

    /**
     * @notice Proposes the Merkle root of a closed period's settlement rows (version 1) so that each
     * institution can verify its statement. It becomes final `SETTLEMENT_DISPUTE_WINDOW` seconds from now
     * unless superseded; `rowCount` must equal the period's institution count.
     */
    function anchorSettlement(uint256 period, bytes32 root, uint256 rowCount) external onlyDelegated onlyRole(SETTLER_ROLE) {
        _checkSettlement(period, root, rowCount);
        uint256 latest = _settlementVersionCount[period];
        if (latest != 0) revert SettlementAlreadyAnchored(period, latest, _settlementVersions[period][latest].root);
        uint256 finalAt = _storeSettlementVersion(period, 1, root, rowCount, bytes32(0));
        emit SettlementProposed(period, 1, root, rowCount, finalAt);
    }

    /**
     * @notice Replaces a settlement root that is not yet final with a new version; the old versions stay
     * readable. The new version has its own dispute window.
     * @param reasonHash keccak256 of the published explanation (non-zero).
     */
    function supersedeSettlement(uint256 period, bytes32 root, uint256 rowCount, bytes32 reasonHash)
        external onlyDelegated
        onlyRole(SETTLER_ROLE)
    {
        _checkSettlement(period, root, rowCount);
        if (reasonHash == bytes32(0)) revert SupersedeReasonMissing(period);
        uint256 latest = _settlementVersionCount[period];
        if (latest == 0) revert SettlementNotAnchored(period);
        SettlementVersion storage previous = _settlementVersions[period][latest];
        if (block.timestamp >= previous.finalAt) revert SettlementAlreadyFinal(period, latest, previous.finalAt);
        bytes32 previousRoot = previous.root;
        uint256 finalAt = _storeSettlementVersion(period, latest + 1, root, rowCount, reasonHash);
        emit SettlementSuperseded(period, latest + 1, previousRoot, root, rowCount, reasonHash, finalAt);
    }

    /**
     * @notice Files a dispute of a recorded interaction (by its EIP-712 digest) or, with a zero digest, of the
     * institution's statement for `period`. Only the institution's signer may call this; it emits an event.
     */
    function fileDispute(address account, uint256 period, bytes32 interactionDigest, bytes32 reasonHash) external onlyDelegated {
        Profile storage profile = _requireRegistered(account);
        if (msg.sender != profile.signer) revert NotInstitutionSigner(account, msg.sender, profile.signer);
        _checkPeriodStarted(period);
        emit DisputeFiled(account, period, interactionDigest, reasonHash);
    }

    /**
     * @notice As `fileDispute`, authorised by the signer's EIP-712
     * `Dispute(institution, period, interactionDigest, reasonHash, deadline)`; anyone may submit it, once.
     */
    function fileDisputeBySig(
        address account,
        uint256 period,
        bytes32 interactionDigest,
        bytes32 reasonHash,
        uint64 deadline,
        bytes calldata signature
    ) external onlyDelegated {
        Profile storage profile = _requireRegistered(account);
        _checkDeadline(deadline);
        _checkPeriodStarted(period);
        bytes32 digest = _requireSignedBy(
            account,
            profile.signer,
            keccak256(abi.encode(DISPUTE_TYPEHASH, account, period, interactionDigest, reasonHash, deadline)),
            signature
        );
        _useMessage(digest);
        emit DisputeFiled(account, period, interactionDigest, reasonHash);
    }

    /**
     * @notice Records a reversal of a recorded interaction, signed by the institution
     * (`Reversal(institution, originalDigest, units, reasonHash, deadline)`): its own event in the open
     * period; the original interaction and its event never change. Each original is reversed at most once.
     * @dev Note: no units move on chain. A settlement applies the reversal as its own row.
     */
    function recordReversal(
        address account,
        bytes32 originalDigest,
        uint64 units,
        bytes32 reasonHash,
        uint64 deadline,
        bytes calldata signature
    ) external onlyDelegated onlyRole(SETTLER_ROLE) {
        Profile storage profile = _requireRegistered(account);
        _checkDeadline(deadline);
        if (_reversed[originalDigest]) revert AlreadyReversed(originalDigest);
        bytes32 digest = _requireSignedBy(
            account,
            profile.signer,
            keccak256(abi.encode(REVERSAL_TYPEHASH, account, originalDigest, units, reasonHash, deadline)),
            signature
        );
        _useMessage(digest);
        _reversed[originalDigest] = true;
        emit ReversalRecorded(account, originalDigest, units, reasonHash, _config.currentPeriod);
    }

    /// @notice The nonce the next signed rotation or recovery cancellation of `account` must carry.
    function registryNonce(address account) external view returns (uint256) {
        return _registry[account].nonce;
    }

    /// @notice The pending recovery of `account`: its new signer and the time from which it can complete;
    /// `(address(0), 0)` when none is pending.
    function pendingRecovery(address account) external view returns (address newSigner, uint256 readyAt) {
        Registry memory registry = _registry[account];
        return (registry.pendingSigner, registry.recoveryReadyAt);
    }

    /// @notice The rate scheduled for `category` from the next period, and whether one is scheduled.
    function scheduledRateOf(uint16 category)
        external
        view
        returns (uint256 syncUnitsPerRecord, uint256 fetchUnitsPerRecord, bool scheduled)
    {
        Rate memory rate = _scheduledRates[category];
        return (rate.syncUnitsPerRecord, rate.fetchUnitsPerRecord, rate.defined);
    }

    /// @notice The categories with a rate scheduled for the next period, in scheduling order.
    function scheduledCategories() external view returns (uint16[] memory) {
        return _scheduledCategories;
    }

    /// @notice The platform fee scheduled for the next period, and whether one is scheduled.
    function scheduledPlatformFee() external view returns (uint256 feeBps, bool scheduled) {
        ScheduledFee memory fee = _scheduledFee;
        return (fee.feeBps, fee.pending);
    }

    /// @notice Number of institutions (settlement rows) of a closed period; reverts if it is not closed.
    function periodInstitutionCount(uint256 period) external view returns (uint256) {
        return _closedPeriod(period).institutionCount;
    }

    /// @notice The latest settlement version of `period` (0 when none), its root, and whether it is final.
    function settlementStatus(uint256 period) external view returns (uint256 version, bytes32 root, bool isFinal) {
        version = _settlementVersionCount[period];
        SettlementVersion memory latest = _settlementVersions[period][version];
        return (version, latest.root, version != 0 && block.timestamp >= latest.finalAt);
    }

    /// @notice Version `version` (1-based) of `period`'s settlement root; reverts if there is none.
    function settlementVersion(uint256 period, uint256 version) external view returns (SettlementVersion memory) {
        uint256 latest = _settlementVersionCount[period];
        if (version == 0 || version > latest) revert UnknownSettlementVersion(period, version, latest);
        return _settlementVersions[period][version];
    }

    /**
     * @notice Whether `row` is part of the final settlement of `row.period`, so that an institution can check
     * its statement against the chain without trusting the analyst who produced it.
     * @dev The leaf is `keccak256(bytes.concat(keccak256(abi.encode(row))))`: the leaf encoding of
     * OpenZeppelin's StandardMerkleTree, whose sorted-pair proofs `MerkleProof` checks.
     * @return True if the period's latest root is final and `proof` proves `row` against it; false otherwise.
     */
    function verifySettlementRow(SettlementRow calldata row, bytes32[] calldata proof) external view returns (bool) {
        uint256 latest = _settlementVersionCount[row.period];
        if (latest == 0) return false;
        SettlementVersion storage version = _settlementVersions[row.period][latest];
        if (block.timestamp < version.finalAt) return false;
        return _verifyRow(row, proof, version.root);
    }

    /// @notice Whether `row` is part of version `version` of its period's settlement, final or not.
    function verifySettlementRowAt(SettlementRow calldata row, uint256 version, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        if (version == 0 || version > _settlementVersionCount[row.period]) return false;
        return _verifyRow(row, proof, _settlementVersions[row.period][version].root);
    }
}
